"""Deletion and garbage collection: what kube-controller-manager and the kubelet do when an object goes away.

- finalizers: an object with finalizers is only marked (``deletionTimestamp``) and goes once they are removed;
- pods bound to a node are deleted gracefully: marked with a grace period, removed when the kubelet (``Cluster``)
  deletes them again with ``gracePeriodSeconds=0`` after stopping the process;
- removing a namespace deletes its contents;
- garbage collection by ``ownerReferences[*].uid``: background cascade, recursive, ``propagationPolicy=Orphan``
  honoured, finalizers on dependents honoured, an owner that still exists keeps the dependent; and, like the real GC,
  a dependent whose owners do not exist is deleted (``gc_dangling_dependents``).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from .store import NAMESPACES, PODS, ObjKey, ResKey, now_rfc3339


class GarbageCollector:
    """Delete, finalize and collect dependents (a mixin of ``ApiServer``)."""

    # Declared and initialised by ApiServer (an attrs class); listed here for the reader.
    _store: dict[ResKey, dict[tuple[str | None, str], dict[str, Any]]]
    _by_uid: dict[str, ObjKey]  # uid → object
    _dependents: dict[str, set[ObjKey]]  # owner uid → objects that name it in ownerReferences
    _orphaned: set[str]  # uids whose deletion asked for propagationPolicy=Orphan (honoured on removal)

    def _delete(self, key: ObjKey, grace: Any = None, *, orphan: bool = False) -> dict[str, Any]:
        """A DELETE request (or a GC deletion): mark for deletion or remove now."""
        res, namespace, name = key
        obj = self._store[res][(namespace, name)]
        meta = obj["metadata"]
        if res == PODS and (obj.get("spec") or {}).get("nodeName"):
            # A pod bound to a node is deleted gracefully: the kubelet (Cluster) stops the containers
            # and then deletes it with gracePeriodSeconds=0, which removes it.
            default_grace = (obj.get("spec") or {}).get("terminationGracePeriodSeconds", 30)
            seconds = int(grace) if grace is not None else int(default_grace)
            previous = meta.get("deletionGracePeriodSeconds")
            if previous is None or seconds < int(previous):
                deadline = datetime.datetime.now(tz=datetime.UTC) + datetime.timedelta(seconds=seconds)
                obj = self._set_meta(
                    key,
                    deletionTimestamp=meta.get("deletionTimestamp") or deadline.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    deletionGracePeriodSeconds=seconds,
                )
        elif meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                obj = self._set_meta(key, deletionTimestamp=now_rfc3339(), deletionGracePeriodSeconds=0)
        else:
            return self._remove(key, orphan=orphan)
        if orphan:
            self._orphaned.add(meta["uid"])
        self._remove_if_released(key)
        return obj

    def _remove_if_released(self, key: ObjKey) -> None:
        res, namespace, name = key
        obj = self._store.get(res, {}).get((namespace, name))
        if obj is None:
            return
        meta = obj["metadata"]
        if not meta.get("deletionTimestamp") or meta.get("finalizers"):
            return
        if res == PODS and (obj.get("spec") or {}).get("nodeName") and meta.get("deletionGracePeriodSeconds") != 0:
            return  # still terminating on the node
        self._remove(key, orphan=meta["uid"] in self._orphaned)

    def _remove(self, key: ObjKey, *, orphan: bool = False) -> dict[str, Any]:
        """Really remove an object, then garbage-collect its dependents (background cascade)."""
        res, namespace, name = key
        obj = self._store[res].pop((namespace, name))
        uid = obj["metadata"]["uid"]
        self._orphaned.discard(uid)
        self._index(key, obj, None)
        gone = dict(obj)
        gone["metadata"] = {**obj["metadata"], "resourceVersion": self._next_rv()}
        self._emit(res, "DELETED", gone, obj)
        if res == NAMESPACES:  # the namespace controller deletes everything in it
            for other, objects in list(self._store.items()):
                for obj_ns, obj_name in [k for k in objects if k[0] == name]:
                    self._delete_if_present((other, obj_ns, obj_name))
        for dependent in sorted(self._dependents.pop(uid, set())):
            self._collect(dependent, uid, orphan=orphan)
        return gone

    def _delete_if_present(self, key: ObjKey) -> None:
        res, namespace, name = key
        if (namespace, name) in self._store.get(res, {}):
            self._delete(key)

    def _collect(self, key: ObjKey, owner_uid: str, *, orphan: bool) -> None:
        res, namespace, name = key
        obj = self._store.get(res, {}).get((namespace, name))
        if obj is None:
            return
        refs = obj["metadata"].get("ownerReferences") or []
        others = [ref for ref in refs if ref.get("uid") != owner_uid and ref.get("uid") in self._by_uid]
        if orphan or others:
            self._set_meta(key, ownerReferences=[ref for ref in refs if ref.get("uid") != owner_uid] or None)
            if not self._store[res][(namespace, name)]["metadata"].get("ownerReferences"):
                self._store[res][(namespace, name)]["metadata"].pop("ownerReferences", None)
        else:
            self._delete(key)

    def _collect_if_dangling(self, key: ObjKey, uid: str) -> None:
        """The real GC deletes a dependent whose owners (looked up by uid) do not exist."""
        with self._state_lock:
            res, namespace, name = key
            obj = self._store.get(res, {}).get((namespace, name))
            if obj is None or obj["metadata"]["uid"] != uid:
                return
            refs = obj["metadata"].get("ownerReferences") or []
            if refs and all(ref.get("uid") not in self._by_uid for ref in refs):
                self._delete(key)

    def _index(self, key: ObjKey, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> None:
        """Keep the uid → object and owner uid → dependents indexes in step with the store."""
        for obj, add in ((old, False), (new, True)):
            if obj is None:
                continue
            meta = obj["metadata"]
            owners = {ref.get("uid") for ref in meta.get("ownerReferences") or [] if ref.get("uid")}
            for owner in owners:
                if add:
                    self._dependents.setdefault(owner, set()).add(key)
                elif owner in self._dependents:
                    self._dependents[owner].discard(key)
            if add:
                self._by_uid[meta["uid"]] = key
            else:
                self._by_uid.pop(meta["uid"], None)
