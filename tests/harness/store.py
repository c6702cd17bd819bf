"""The objects of the emulated API server and the metadata the server owns.

kmock keeps objects as plain merged dicts, with none of the server-side behaviour an operator depends on. This module
is the apiserver's registry layer instead: ``ObjectStore`` creates, updates (merge patch, JSON patch, PUT) and
re-stamps objects, and owns

- the metadata only the server sets: ``uid``, ``creationTimestamp``, ``resourceVersion`` (one global counter),
  ``generation`` (bumped only when ``spec`` changes), ``generateName``, the namespace from the URL;
- the ``status`` subresource split (the status endpoint changes only ``status``, the main one ignores it);
- ``metadata.resourceVersion`` preconditions (409 ``Conflict``), name and label validation and, for custom
  resources, the CRD's schema (``schema_validation``), reported together as one 422 ``Invalid``;
- the few defaults controllers read back (Job defaults and selector labels, pod ``Pending``, namespace ``Active``).

Watch events (``watch.WatchStreams._emit``) and the garbage collector's indexes (``gc.GarbageCollector._index``)
are told of every change here. Everything runs under ``ApiServer._state_lock``.
"""

from __future__ import annotations

import copy
import datetime
import random
import re
import threading
import uuid
from collections.abc import Mapping
from typing import Any

import json_merge_patch
import jsonpatch
import kmock

from .schema_validation import CustomResourceSchema, FieldError, invalid_error

ResKey = tuple[str, str, str]  # (group, version, plural); group "" is the core API
ObjKey = tuple[ResKey, str | None, str]  # (resource, namespace or None, name)

NAMESPACES: ResKey = ("", "v1", "namespaces")
PODS: ResKey = ("", "v1", "pods")
SERVICES: ResKey = ("", "v1", "services")
JOBS: ResKey = ("batch", "v1", "jobs")
CRDS: ResKey = ("apiextensions.k8s.io", "v1", "customresourcedefinitions")

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the apiserver's alphabet for generateName suffixes

# Keys of metadata that only the server sets; clients cannot change them with a patch or a PUT.
_SERVER_OWNED_META = ("uid", "creationTimestamp", "generation", "deletionTimestamp", "deletionGracePeriodSeconds")


def now_rfc3339() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def random_suffix(length: int = 5) -> str:
    return "".join(random.choice(_GENERATE_ALPHABET) for _ in range(length))


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch; returns a new value and never mutates its arguments.

    The same library the operator computes its patches with (json-merge-patch): one implementation.
    """
    return json_merge_patch.merge(copy.deepcopy(target), copy.deepcopy(patch))


def strip_directives(value: Any) -> Any:
    """Drop strategic-merge-patch directives (``$patch``, ``$setElementOrder/...``); the rest is a merge patch."""
    if isinstance(value, Mapping):
        return {k: strip_directives(v) for k, v in value.items() if not str(k).startswith("$")}
    if isinstance(value, list):
        return [strip_directives(v) for v in value]
    return value


def api_error(status: int, reason: str, message: str, **details: Any) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=status, reason=reason, message=message, details=details)


class ObjectStore:
    """Create, update and re-stamp objects with the apiserver's semantics (a mixin of ``ApiServer``)."""

    # Declared and initialised by ApiServer (an attrs class); listed here for the reader.
    resources: Any  # kmock's registry of served resources (kind, namespaced, subresources)
    require_namespaces: bool
    gc_dangling_dependents: bool
    _store: dict[ResKey, dict[tuple[str | None, str], dict[str, Any]]]
    _schemas: dict[ResKey, CustomResourceSchema]
    _rv: int
    _state_lock: threading.RLock

    def _create(
        self,
        res: ResKey,
        namespace: str | None,
        body: dict[str, Any],
        *,
        dry_run: bool = False,
        keep_status: bool = False,
        field_validation: str | None = None,
        warnings: list[str] | None = None,
    ) -> dict[str, Any]:
        info = self._info(res)
        obj = copy.deepcopy(body)
        meta = obj.get("metadata") or {}
        obj["metadata"] = meta
        if info.namespaced:
            if namespace and meta.get("namespace") and meta["namespace"] != namespace:
                raise api_error(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                )
            namespace = namespace or meta.get("namespace")
            if not namespace:
                raise api_error(400, "BadRequest", "a namespace is required for namespaced resources")
            meta["namespace"] = namespace
            ns_obj = self._store.get(NAMESPACES, {}).get((None, namespace))
            if self.require_namespaces and ns_obj is None:
                raise api_error(
                    404, "NotFound", f'namespaces "{namespace}" not found', name=namespace, kind="namespaces"
                )
            if ns_obj is not None and ns_obj["metadata"].get("deletionTimestamp"):
                raise api_error(
                    403,
                    "Forbidden",
                    f"unable to create new content in namespace {namespace} because it is being terminated",
                )
        else:
            namespace = None
            meta.pop("namespace", None)
        objects = self._store.setdefault(res, {})
        if not meta.get("name"):
            prefix = meta.get("generateName")
            if not prefix:
                raise api_error(422, "Invalid", "metadata.name: Required value: name or generateName is required")
            name = prefix + random_suffix()
            while (namespace, name) in objects:
                name = prefix + random_suffix()
            meta["name"] = name
        name = meta["name"]
        if "status" in info.subresources and not keep_status:
            obj.pop("status", None)  # the status of a new object is the server's/controllers' business
        obj, schema_errors = self._admit(res, obj, None, field_validation, warnings)
        meta = obj["metadata"]
        self._validate(res, obj, schema_errors)
        if (namespace, name) in objects:
            raise api_error(
                409,
                "AlreadyExists",
                f'{self._qualified(res)} "{name}" already exists',
                name=name,
                group=res[0],
                kind=res[2],
            )
        obj["apiVersion"] = self._api_version(res)
        obj["kind"] = self._kind(res)
        for key in ("deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion"):
            meta.pop(key, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        meta["generation"] = 1
        self._apply_defaults(res, obj)
        if dry_run:
            return obj
        meta["resourceVersion"] = self._next_rv()
        objects[(namespace, name)] = obj
        self._index((res, namespace, name), None, obj)
        self._emit(res, "ADDED", obj, None)
        if self.gc_dangling_dependents and meta.get("ownerReferences") and self._loop is not None:
            self._loop.call_later(0.2, self._collect_if_dangling, (res, namespace, name), meta["uid"])
        return obj

    def _update(
        self,
        res: ResKey,
        namespace: str | None,
        name: str,
        change: tuple[str, Any],
        subresource: str | None,
        *,
        dry_run: bool = False,
        field_validation: str | None = None,
        warnings: list[str] | None = None,
    ) -> dict[str, Any]:
        info = self._info(res)
        current = self._get_or_404(res, namespace, name)
        if subresource not in (None, "status") or (subresource == "status" and "status" not in info.subresources):
            raise api_error(
                404, "NotFound", f"the server could not find the requested resource ({res[2]}/{subresource})"
            )
        mode, body = change
        if mode == "json":
            try:
                new = jsonpatch.apply_patch(copy.deepcopy(current), body)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as e:
                raise api_error(422, "Invalid", f"the JSON patch cannot be applied: {e}") from None
        elif mode == "merge":
            new = merge_patch(current, body)
        else:
            new = copy.deepcopy(body)
        wanted_rv = (body.get("metadata") or {}).get("resourceVersion") if isinstance(body, Mapping) else None
        if wanted_rv and str(wanted_rv) != current["metadata"]["resourceVersion"]:
            raise api_error(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {self._qualified(res)} "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again",
                name=name,
                group=res[0],
                kind=res[2],
            )
        if subresource == "status":  # the status endpoint changes the status only
            status = new.get("status")
            new = dict(current)
            if status is None:
                new.pop("status", None)
            else:
                new["status"] = status
        elif "status" in info.subresources:  # the main endpoint ignores the status
            new = dict(new)
            if "status" in current:
                new["status"] = current["status"]
            else:
                new.pop("status", None)
        new_meta = dict(new.get("metadata") or {})
        new["metadata"] = new_meta
        for key in ("name", "namespace", *_SERVER_OWNED_META):
            if key in current["metadata"]:
                new_meta[key] = current["metadata"][key]
            else:
                new_meta.pop(key, None)
        new_meta["resourceVersion"] = current["metadata"]["resourceVersion"]
        new["apiVersion"], new["kind"] = current["apiVersion"], current["kind"]
        new, schema_errors = self._admit(res, new, current, field_validation, warnings)
        if new == current:
            return current  # a no-op: no new resourceVersion, no watch event
        self._validate(res, new, schema_errors)
        if new.get("spec") != current.get("spec"):
            new_meta["generation"] = int(current["metadata"].get("generation", 1)) + 1
        if dry_run:
            return new
        new_meta["resourceVersion"] = self._next_rv()
        self._store[res][(namespace, name)] = new
        self._index((res, namespace, name), current, new)
        self._emit(res, "MODIFIED", new, current)
        self._remove_if_released((res, namespace, name))
        return new

    def _set_meta(self, key: ObjKey, **changes: Any) -> dict[str, Any]:
        """A server-side metadata change (deletionTimestamp, ownerReferences) with a new resourceVersion."""
        res, namespace, name = key
        current = self._store[res][(namespace, name)]
        new = dict(current)
        new["metadata"] = {**current["metadata"], **changes, "resourceVersion": self._next_rv()}
        self._store[res][(namespace, name)] = new
        self._index(key, current, new)
        self._emit(res, "MODIFIED", new, current)
        return new

    def _admit(
        self,
        res: ResKey,
        obj: dict[str, Any],
        old: Mapping[str, Any] | None,
        field_validation: str | None,
        warnings: list[str] | None,
    ) -> tuple[dict[str, Any], list[FieldError]]:
        """Prune and schema-check a custom resource (see schema_validation); built-in kinds pass unchanged."""
        schema = self._schemas.get(res)
        if schema is None:
            return obj, []
        return schema.admit(obj, old, field_validation, warnings)

    def _validate(self, res: ResKey, obj: Mapping[str, Any], schema_errors: list[FieldError] | None = None) -> None:
        """Name and label checks, reported in one 422 together with the schema's errors."""
        meta = obj.get("metadata") or {}
        name = str(meta.get("name", ""))
        errors: list[FieldError] = []

        def invalid(field: str, value: str, detail: str) -> None:
            errors.append(FieldError("FieldValueInvalid", field, f'Invalid value: "{value}": {detail}'))

        if res in (NAMESPACES, SERVICES, JOBS):  # names that end up as DNS labels or label values
            if len(name) > 63 or not _DNS_LABEL.match(name):
                invalid(
                    "metadata.name",
                    name,
                    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
                    "start and end with an alphanumeric character (at most 63 characters)",
                )
        elif len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
            invalid("metadata.name", name, "a lowercase RFC 1123 subdomain is required")
        for key, value in (meta.get("labels") or {}).items():
            prefix, _, label = str(key).rpartition("/")
            if (prefix and not _DNS_SUBDOMAIN.match(prefix)) or len(label) > 63 or not _LABEL_NAME.match(label):
                invalid("metadata.labels", str(key), "invalid label key")
            if not isinstance(value, str) or len(value) > 63 or (value and not _LABEL_NAME.match(value)):
                invalid("metadata.labels", str(value), "invalid label value")
        errors.extend(schema_errors or [])
        if errors:
            raise invalid_error(self._kind(res), res[0], name, errors)

    def _apply_defaults(self, res: ResKey, obj: dict[str, Any]) -> None:
        """The few defaults of the real API that controllers and operators read back."""
        meta = obj["metadata"]
        if res == NAMESPACES:
            obj["status"] = {"phase": "Active"}
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
        elif res == PODS:
            obj.setdefault("spec", {}).setdefault("restartPolicy", "Always")
            obj["status"] = {"phase": "Pending"}
        elif res == JOBS:
            spec = obj.setdefault("spec", {})
            spec.setdefault("completionMode", "NonIndexed")
            if "parallelism" not in spec and "completions" not in spec:
                spec["completions"] = 1
            spec.setdefault("parallelism", 1)
            spec.setdefault("backoffLimit", 6)
            spec.setdefault("suspend", False)
            template = spec.setdefault("template", {})
            labels = template.setdefault("metadata", {}).setdefault("labels", {})
            selector_labels = {"batch.kubernetes.io/controller-uid": meta["uid"]}
            if not spec.get("manualSelector"):
                labels.update(selector_labels)
                labels.update({"batch.kubernetes.io/job-name": meta["name"], "job-name": meta["name"]})
                spec.setdefault("selector", {"matchLabels": selector_labels})

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _get_or_404(self, res: ResKey, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self._store.get(res, {}).get((namespace, name))
        if obj is None:
            raise api_error(
                404, "NotFound", f'{self._qualified(res)} "{name}" not found', name=name, group=res[0], kind=res[2]
            )
        return obj

    def _sorted(self, res: ResKey) -> list[tuple[tuple[str | None, str], dict[str, Any]]]:
        return sorted(self._store.get(res, {}).items(), key=lambda kv: (kv[0][0] or "", kv[0][1]))

    def _info(self, res: ResKey) -> kmock.ResourceInfo:
        return self.resources[kmock.resource(res[0], res[1], res[2])]

    def _kind(self, res: ResKey) -> str:
        return self._info(res).kind or res[2].capitalize()

    def _api_version(self, res: ResKey) -> str:
        return f"{res[0]}/{res[1]}" if res[0] else res[1]

    @staticmethod
    def _qualified(res: ResKey) -> str:
        return f"{res[2]}.{res[0]}" if res[0] else res[2]
