"""A one-node cluster for tests: the Job controller, a scheduler and a kubelet that runs pods as local processes.

It talks to a ``RunningApiServer`` over HTTP with the real ``kubernetes`` client, like the real controllers:
informers (list + watch, resumed by ``resourceVersion``) keep caches of Jobs and Pods; one reconcile thread
creates pods for Jobs, maintains Job status, schedules and runs pods, and reports pod status via ``/status``.

The kubelet emulates a container's filesystem by path mapping: volumes are directories under the pod's
directory (a persistentVolumeClaim's is ``<work_root>/pvcs/<namespace>/<claim>``, shared by every pod that
mounts the claim and kept after them, like a real volume; the claim object must exist), and every argv
element, env value and JSON string in configMap ``*.json`` files that starts with a ``mountPath`` (or equals the
``terminationMessagePath``) is rewritten to the host path. In those JSON files, ``"0.0.0.0"`` becomes the pod IP
(127.0.0.N, one per running pod), so several pods can serve on the same port.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import dataclasses
import datetime
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kubernetes.client
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from .apiserver import RunningApiServer
from .dns import ClusterDNS, NoClusterDNS
from .selectors import labels_match, parse_label_selector
from .store import now_rfc3339, random_suffix

log = logging.getLogger("kubetune.tests.cluster")

GPU = "nvidia.com/gpu"
INDEX_KEY = "batch.kubernetes.io/job-completion-index"
NODE_NAME = "kubetune-test-node"
TERMINATION_MESSAGE_LIMIT = 4096
LOG_TAIL_LIMIT = 2048
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def _descendants(root: int) -> list[int]:
    """Every process below `root`, from /proc (children first found, then theirs)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # "pid (comm) state ppid ...": comm may hold spaces, so split after its closing parenthesis.
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: list[int] = []
    queue = [root]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


class PodNotReady(Exception):
    """The kubelet cannot start the container yet; ``reason``/``message`` go into its waiting state."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _owner_uid(obj: Mapping[str, Any]) -> str | None:
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


def _condition(ctype: str, status: bool, reason: str = "", message: str = "") -> dict[str, Any]:
    cond: dict[str, Any] = {"type": ctype, "status": "True" if status else "False", "lastTransitionTime": now_rfc3339()}
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


def _same_conditions(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    def strip(conds: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [(c.get("type"), c.get("status"), c.get("reason"), c.get("message")) for c in conds]

    return strip(a) == strip(b)


def _merge_conditions(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Replace conditions by type, keeping ``lastTransitionTime`` when the status did not change."""
    result = {c["type"]: c for c in old}
    for cond in new:
        previous = result.get(cond["type"])
        if previous is not None and previous.get("status") == cond["status"]:
            cond = {**cond, "lastTransitionTime": previous.get("lastTransitionTime", cond["lastTransitionTime"])}
        result[cond["type"]] = cond
    return list(result.values())


def _is_true(obj: Mapping[str, Any], ctype: str) -> bool:
    return any(
        c.get("type") == ctype and c.get("status") == "True" for c in (obj.get("status") or {}).get("conditions") or []
    )


def _gpus_requested(pod: Mapping[str, Any]) -> int:
    total = 0
    for container in pod["spec"].get("containers") or []:
        resources = container.get("resources") or {}
        value = (resources.get("limits") or {}).get(GPU) or (resources.get("requests") or {}).get(GPU) or 0
        total += int(value)
    return total


def _compress_indexes(indexes: set[int]) -> str:
    """``{0, 1, 2, 5}`` → ``"0-2,5"`` as in ``status.completedIndexes``."""
    parts: list[str] = []
    ordered = sorted(indexes)
    start = prev = None
    for i in [*ordered, None]:
        if i is not None and prev is not None and i == prev + 1:
            prev = i
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = i
    return ",".join(parts)


def expand_vars(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: known variables are replaced, unknown ones kept, ``$$`` is ``$``."""

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env.get(name, m.group(0))

    return _VAR_REF.sub(repl, text)


class _Informer:
    """List + watch one resource into a dict cache (uid → object), resuming by ``resourceVersion``."""

    def __init__(self, client: kubernetes.client.ApiClient, path: str, on_change: threading.Event) -> None:
        self._client = client
        self._path = path
        self._on_change = on_change
        self._lock = threading.Lock()
        self._objects: dict[str, dict[str, Any]] = {}
        # uids seen deleted: uids are never reused, so a write result that arrives after the DELETED
        # event (our PATCH raced the deletion) must not bring the object back into the cache.
        self._deleted: set[str] = set()
        self._rv = ""
        self._stopped = threading.Event()
        self._response: Any = None
        self.synced = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"informer {path}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):
                response.shutdown()
        self._thread.join(5)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._objects.values())

    def store(self, obj: Mapping[str, Any], deleted: bool = False) -> None:
        """Put our own write's result into the cache now (the watch event follows with the same version)."""
        uid = obj["metadata"]["uid"]
        with self._lock:
            if uid in self._deleted:
                return
            current = self._objects.get(uid)
            if current is not None and int(current["metadata"]["resourceVersion"]) > int(
                obj["metadata"]["resourceVersion"]
            ):
                return
            if deleted:
                self._objects.pop(uid, None)
                self._deleted.add(uid)
            else:
                self._objects[uid] = dict(obj)
        self._on_change.set()

    def _request(self, query: list[tuple[str, str]], stream: bool) -> Any:
        return self._client.call_api(
            self._path,
            "GET",
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
            _preload_content=False,
            _return_http_data_only=True,
            _request_timeout=(5, 60) if stream else 30,
        )

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                if not self._rv:
                    self._list()
                self._watch()
            except Exception as e:
                if self._stopped.is_set():
                    return
                log.debug("informer %s: %r; retrying", self._path, e)
                self._rv = ""
                time.sleep(0.2)

    def _list(self) -> None:
        data = json.loads(self._request([], stream=False).data)
        with self._lock:
            self._objects = {obj["metadata"]["uid"]: obj for obj in data["items"]}
            self._rv = data["metadata"]["resourceVersion"]
        self.synced.set()
        self._on_change.set()

    def _watch(self) -> None:
        query = [("watch", "true"), ("resourceVersion", self._rv), ("timeoutSeconds", "30")]
        self._response = self._request(query, stream=True)
        try:
            for line in iter_resp_lines(self._response):
                if self._stopped.is_set():
                    return
                event = json.loads(line)
                obj = event["object"]
                if event["type"] == "ERROR":  # 410 Gone: relist
                    self._rv = ""
                    return
                self.store(obj, deleted=event["type"] == "DELETED")
                self._rv = obj["metadata"]["resourceVersion"]
        finally:
            self._response.release_conn()
            self._response = None


@dataclasses.dataclass
class _JobTrack:
    succeeded: set[str] = dataclasses.field(default_factory=set)  # pod uids
    failed: set[str] = dataclasses.field(default_factory=set)  # pod uids
    indexes: set[int] = dataclasses.field(default_factory=set)  # succeeded completion indexes


@dataclasses.dataclass
class _Process:
    namespace: str
    name: str
    uid: str
    popen: subprocess.Popen[bytes]
    pod_dir: Path
    log_path: Path
    termination_path: Path
    message_policy: str
    ip: str
    started_at: str
    grace: float
    term_deadline: float | None = None  # set once SIGTERM was sent (pod deletion, deadline)


class Cluster:
    """The Job controller, scheduler and kubelet of a one-node cluster, for a ``RunningApiServer``.

    ``run_pods=False``: the Job controller still creates pods, but nothing schedules or runs them (Pending).
    ``gpus``: the node's ``nvidia.com/gpu`` capacity; pods that do not fit stay Pending and Unschedulable.
    ``extra_env``: added to every container process (after the pod's env).
    ``bin_dirs``: PATH prefix for commands (default: the directory of ``sys.executable``, for console scripts).
    ``work_root``: where pod directories live (default: a temporary directory removed on ``stop()``).
    ``max_grace``: cap on ``terminationGracePeriodSeconds`` between SIGTERM and SIGKILL.
    """

    def __init__(
        self,
        api: RunningApiServer,
        *,
        run_pods: bool = True,
        gpus: int = 0,
        extra_env: Mapping[str, str] | None = None,
        bin_dirs: list[Path] | tuple[Path, ...] | None = None,
        work_root: Path | None = None,
        max_grace: float = 30.0,
        poll_interval: float = 0.1,
    ) -> None:
        self.api = api
        self.run_pods = run_pods
        self.gpus = gpus
        self.extra_env = dict(extra_env or {})
        self.bin_dirs = list(bin_dirs) if bin_dirs is not None else [Path(sys.executable).parent]
        self._own_work_root = work_root is None
        self.work_root = Path(work_root) if work_root is not None else Path(tempfile.mkdtemp(prefix="kubetune-pods-"))
        self.max_grace = max_grace
        self.poll_interval = poll_interval
        self.started_pods: list[str] = []  # pod names in the order their processes started
        self.errors: list[str] = []  # reconcile errors (logged, never fatal)

        self._client = api.api_client()
        self._changed = threading.Event()
        self._pods = _Informer(self._client, "/api/v1/pods", self._changed)
        self._jobs = _Informer(self._client, "/apis/batch/v1/jobs", self._changed)
        self._procs: dict[str, _Process] = {}  # pod uid → process
        self._finished: dict[str, _Process] = {}  # pod uid → process that exited (kept for logs)
        self._pod_dirs: dict[tuple[str, str], Path] = {}
        self._free_ips = [f"127.0.0.{n}" for n in range(2, 255)]
        self.dns = ClusterDNS(self.work_root / "cluster-dns")
        self._job_counts: dict[str, _JobTrack] = {}  # job uid → finished pods
        self._sent_status: dict[str, Any] = {}  # pod uid → last status we patched (avoid no-op writes)
        self._lock = threading.RLock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kubetune-test-cluster", daemon=True)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Cluster:
        self.api.api.pod_log_provider = self._pod_log
        self._pods.start()
        self._jobs.start()
        if not (self._pods.synced.wait(10) and self._jobs.synced.wait(10)):
            raise TimeoutError("the cluster's informers did not sync")
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop reconciling and kill every process (SIGKILL to the process groups)."""
        self._stopped.set()
        self._changed.set()
        if self._thread.is_alive():
            self._thread.join(10)
        with self._lock:
            for proc in list(self._procs.values()):
                self._signal(proc, signal.SIGKILL)
            for proc in list(self._procs.values()):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(5)
                proc.popen.stdout and proc.popen.stdout.close()
            self._procs.clear()
        self._pods.stop()
        self._jobs.stop()
        self._client.close()
        if self.api.api.pod_log_provider == self._pod_log:
            self.api.api.pod_log_provider = None
        if self._own_work_root:
            shutil.rmtree(self.work_root, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ test hooks

    def pods(self, label_selector: str | None = None) -> list[dict[str, Any]]:
        selector = parse_label_selector(label_selector)
        pods = [p for p in self.api.api.objects_of("", "v1", "pods") if labels_match(selector, p)]
        return sorted(pods, key=lambda p: p["metadata"]["creationTimestamp"])

    def jobs(self) -> list[dict[str, Any]]:
        return self.api.api.objects_of("batch", "v1", "jobs")

    def kill(self, pod_name: str, sig: int = signal.SIGKILL) -> None:
        """Send a signal to a running pod's process group; its status then follows as for any exit."""
        with self._lock:
            for proc in self._procs.values():
                if proc.name == pod_name:
                    self._signal(proc, sig)
                    return
        raise KeyError(f"no running process for pod {pod_name!r}")

    def pod_dir(self, pod_name: str, namespace: str = "default") -> Path:
        with self._lock:
            if (namespace, pod_name) in self._pod_dirs:
                return self._pod_dirs[(namespace, pod_name)]
        raise KeyError(f"pod {namespace}/{pod_name} never started here")

    def log(self, pod_name: str, namespace: str = "default") -> str:
        path = self.pod_dir(pod_name, namespace) / "container.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def output(self, pod_name: str, namespace: str = "default") -> str:
        """The pod's log so far, or "" while its container has not started (for polling predicates)."""
        return self._pod_log(namespace, pod_name) or ""

    def wait_for(self, predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
        """Poll ``predicate()`` until it returns something truthy; return that or raise TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met within {timeout} s; errors: {self.errors[-3:]}")
            time.sleep(interval)

    def _pod_log(self, namespace: str, name: str) -> str | None:
        try:
            return self.log(name, namespace)
        except KeyError:
            return None

    # ------------------------------------------------------------------ API writes

    def _call(self, method: str, path: str, body: Any = None, query: list[tuple[str, str]] | None = None) -> Any:
        content_type = "application/merge-patch+json" if method == "PATCH" else "application/json"
        response = self._client.call_api(
            path,
            method,
            query_params=query or [],
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _return_http_data_only=True,
            _request_timeout=30,
        )
        return json.loads(response.data)

    def _call_unless_gone(
        self, method: str, path: str, body: Any = None, query: list[tuple[str, str]] | None = None
    ) -> Any | None:
        """``_call``, but None when the object is gone (404): it was deleted while we worked on it."""
        try:
            return self._call(method, path, body, query)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def _patch_pod_status(self, pod: Mapping[str, Any], status: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        if self._sent_status.get(uid) == status:
            return
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        new = self._call_unless_gone("PATCH", f"/api/v1/namespaces/{ns}/pods/{name}/status", {"status": status})
        if new is None:
            return
        self._sent_status[uid] = status
        self._pods.store(new)

    # ------------------------------------------------------------------ reconcile loop

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._changed.wait(self.poll_interval)
            self._changed.clear()
            if self._stopped.is_set():
                return
            try:
                self._reconcile()
            except Exception as e:  # never let one bad object stop the controllers
                log.exception("cluster reconcile failed")
                self.errors.append(repr(e))

    def _reconcile(self) -> None:
        pods = self._pods.snapshot()
        for job in self._jobs.snapshot():
            self._guarded(f"job {job['metadata']['name']}", self._sync_job, job, pods)
        pods = self._pods.snapshot()
        live_uids = {p["metadata"]["uid"] for p in pods}
        for pod in sorted(pods, key=lambda p: p["metadata"]["creationTimestamp"]):
            self._guarded(f"pod {pod['metadata']['name']}", self._sync_pod, pod)
        with self._lock:
            for uid, proc in list(self._procs.items()):
                if uid not in live_uids:  # the pod is gone from the API: stop its containers
                    self._guarded(f"orphan process {proc.name}", self._terminate_gone, proc)

    def _guarded(self, what: str, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception as e:
            log.exception("cluster: %s failed", what)
            self.errors.append(f"{what}: {e!r}")

    # ------------------------------------------------------------------ Job controller

    def _sync_job(self, job: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        meta, spec = job["metadata"], job.get("spec") or {}
        status = copy.deepcopy(job.get("status") or {})
        conditions: list[dict[str, Any]] = list(status.get("conditions") or [])
        if _is_true(job, "Complete") or _is_true(job, "Failed"):
            return
        uid = meta["uid"]
        mine = [p for p in pods if _owner_uid(p) == uid]
        # Finished pods are remembered by uid: they count even after they are deleted (as with job tracking).
        counts = self._job_counts.setdefault(uid, _JobTrack())
        for pod in mine:
            phase = (pod.get("status") or {}).get("phase")
            if phase == "Succeeded":
                counts.succeeded.add(pod["metadata"]["uid"])
                index = pod["metadata"].get("annotations", {}).get(INDEX_KEY)
                if index is not None:
                    counts.indexes.add(int(index))
            elif phase == "Failed":
                counts.failed.add(pod["metadata"]["uid"])
        active = [
            p
            for p in mine
            if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
            and not p["metadata"].get("deletionTimestamp")
        ]
        indexed = spec.get("completionMode") == "Indexed"
        completions = spec.get("completions")
        parallelism = int(spec.get("parallelism", 1))
        backoff_limit = int(spec.get("backoffLimit", 6))
        succeeded_indexes = counts.indexes
        now = datetime.datetime.now(tz=datetime.UTC)
        new_conditions: list[dict[str, Any]] = []
        finished = False

        if spec.get("suspend"):
            for pod in active:
                self._delete_pod(pod)
            active = []
            status.pop("startTime", None)
            new_conditions.append(_condition("Suspended", True, "JobSuspended", "Job suspended"))
        else:
            if _is_true(job, "Suspended"):
                new_conditions.append(_condition("Suspended", False, "JobResumed", "Job resumed"))
            status.setdefault("startTime", now_rfc3339())
            started = datetime.datetime.fromisoformat(status["startTime"].replace("Z", "+00:00"))
            deadline = spec.get("activeDeadlineSeconds")
            failure: tuple[str, str] | None = None
            if deadline is not None and (now - started).total_seconds() > int(deadline):
                failure = ("DeadlineExceeded", "Job was active longer than specified deadline")
            elif len(counts.failed) > backoff_limit:
                failure = ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
            if failure is not None:
                for pod in active:
                    self._delete_pod(pod)
                active = []
                finished = True
                new_conditions.append(_condition("Failed", True, *failure))
            elif (indexed and completions is not None and succeeded_indexes >= set(range(int(completions)))) or (
                not indexed and len(counts.succeeded) >= int(completions if completions is not None else 1)
            ):
                finished = True
                status["completionTime"] = now_rfc3339()
                new_conditions.append(_condition("Complete", True))
            else:
                active += self._create_job_pods(job, active, succeeded_indexes, len(counts.succeeded), parallelism)

        status["active"] = len(active)
        status["succeeded"] = len(counts.succeeded)
        status["failed"] = len(counts.failed)
        status["ready"] = sum(1 for p in active if _is_true(p, "Ready"))
        if indexed:
            status["completedIndexes"] = _compress_indexes(succeeded_indexes)
        status["conditions"] = _merge_conditions(conditions, new_conditions)
        if finished:
            self._job_counts.pop(uid, None)
        old = job.get("status") or {}
        if status != old or not _same_conditions(status["conditions"], old.get("conditions") or []):
            patch = {**status, **{key: None for key in old if key not in status}}
            new = self._call_unless_gone(
                "PATCH", f"/apis/batch/v1/namespaces/{meta['namespace']}/jobs/{meta['name']}/status", {"status": patch}
            )
            if new is not None:  # None: deleted while we synced it, and its DELETED event is on the way
                self._jobs.store(new)

    def _create_job_pods(
        self,
        job: dict[str, Any],
        active: list[dict[str, Any]],
        succeeded_indexes: set[int],
        succeeded: int,
        parallelism: int,
    ) -> list[dict[str, Any]]:
        spec = job["spec"]
        wanted: list[int | None] = []
        room = parallelism - len(active)
        if spec.get("completionMode") == "Indexed":
            busy = {int(p["metadata"].get("annotations", {}).get(INDEX_KEY, -1)) for p in active}
            for index in range(int(spec.get("completions", 1))):
                if len(wanted) >= room:
                    break
                if index not in succeeded_indexes and index not in busy:
                    wanted.append(index)
        else:
            completions = spec.get("completions")
            remaining = (int(completions) - succeeded - len(active)) if completions is not None else room
            wanted = [None] * max(0, min(room, remaining))
        if not wanted or not self._still_wants_pods(job):
            return []
        return [self._create_pod(job, index) for index in wanted]

    def _still_wants_pods(self, job: Mapping[str, Any]) -> bool:
        """Read the Job back before creating pods: our cache may not have seen it deleted or suspended yet.

        Without this, a Job deleted while its pod is terminating gets a replacement pod from the stale
        cache, which then starts before the garbage collector removes it.
        """
        meta = job["metadata"]
        live = self._get(f"/apis/batch/v1/namespaces/{meta['namespace']}/jobs/{meta['name']}")
        return (
            live is not None
            and live["metadata"]["uid"] == meta["uid"]
            and not live["metadata"].get("deletionTimestamp")
            and not (live.get("spec") or {}).get("suspend")
        )

    def _create_pod(self, job: dict[str, Any], index: int | None) -> dict[str, Any]:
        meta = job["metadata"]
        template = copy.deepcopy(job["spec"].get("template") or {})
        pod_meta = template.get("metadata") or {}
        labels = dict(pod_meta.get("labels") or {})
        labels.update({"job-name": meta["name"], "batch.kubernetes.io/job-name": meta["name"]})
        labels["batch.kubernetes.io/controller-uid"] = meta["uid"]
        annotations = dict(pod_meta.get("annotations") or {})
        spec = template.get("spec") or {}
        prefix = f"{meta['name']}-"
        if index is not None:
            labels[INDEX_KEY] = str(index)
            annotations[INDEX_KEY] = str(index)
            prefix = f"{meta['name']}-{index}-"
            spec.setdefault("hostname", f"{meta['name']}-{index}")
            for container in spec.get("containers") or []:
                env = container.setdefault("env", [])
                if not any(e.get("name") == "JOB_COMPLETION_INDEX" for e in env):
                    env.append(
                        {
                            "name": "JOB_COMPLETION_INDEX",
                            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{INDEX_KEY}']"}},
                        }
                    )
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": prefix + random_suffix(),
                "namespace": meta["namespace"],
                "labels": labels,
                "annotations": annotations,
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": spec,
        }
        created = self._call("POST", f"/api/v1/namespaces/{meta['namespace']}/pods", pod)
        self._pods.store(created)
        return dict(created)

    def _delete_pod(self, pod: Mapping[str, Any], grace: int | None = None) -> None:
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        query = [("gracePeriodSeconds", str(grace))] if grace is not None else []
        result = self._call_unless_gone("DELETE", f"/api/v1/namespaces/{ns}/pods/{name}", {}, query)
        if result is None:
            self._pods.store(pod, deleted=True)
            return
        if result.get("kind") == "Pod":
            gone = grace == 0 or not result["metadata"].get("deletionTimestamp")
            self._pods.store(result, deleted=gone)

    # ------------------------------------------------------------------ scheduler + kubelet

    def _sync_pod(self, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        status = pod.get("status") or {}
        uid = meta["uid"]
        with self._lock:
            proc = self._procs.get(uid)
            if meta.get("deletionTimestamp"):
                self._terminate_deleted(pod, proc)
                return
            if proc is not None:
                if proc.popen.poll() is not None:
                    self._report_exit(pod, proc)
                elif proc.term_deadline is not None and time.monotonic() > proc.term_deadline:
                    self._signal(proc, signal.SIGKILL)
                return
            if status.get("phase") in ("Succeeded", "Failed") or not self.run_pods:
                return
            if not spec.get("nodeName"):
                if not self._schedule(pod):
                    return
                pod = self._pods_get(uid) or pod
            self._start(pod)

    def _dns_name(self, pod: Mapping[str, Any]) -> tuple[str, str, str] | None:
        """(hostname, subdomain, namespace) when cluster DNS would resolve this pod: its subdomain
        names a headless Service in its namespace that selects it (as CoreDNS requires)."""
        spec, meta = pod.get("spec") or {}, pod["metadata"]
        hostname, subdomain = spec.get("hostname"), spec.get("subdomain")
        if not hostname or not subdomain:
            return None
        service = self._get(f"/api/v1/namespaces/{meta['namespace']}/services/{subdomain}")
        if service is None or (service.get("spec") or {}).get("clusterIP") != "None":
            return None
        selector = (service.get("spec") or {}).get("selector") or {}
        labels = meta.get("labels") or {}
        if not selector or any(labels.get(key) != value for key, value in selector.items()):
            return None
        return str(hostname), str(subdomain), str(meta["namespace"])

    def _pods_get(self, uid: str) -> dict[str, Any] | None:
        return next((p for p in self._pods.snapshot() if p["metadata"]["uid"] == uid), None)

    def _schedule(self, pod: dict[str, Any]) -> bool:
        wanted = _gpus_requested(pod)
        in_use = sum(
            _gpus_requested(p)
            for p in self._pods.snapshot()
            if p["spec"].get("nodeName") and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
        )
        if wanted and wanted > self.gpus - in_use:
            self._patch_pod_status(
                pod,
                {
                    "phase": "Pending",
                    "conditions": [
                        _condition(
                            "PodScheduled",
                            False,
                            "Unschedulable",
                            f"0/1 nodes are available: 1 Insufficient {GPU}.",
                        )
                    ],
                },
            )
            return False
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        bound = self._call("PATCH", f"/api/v1/namespaces/{ns}/pods/{name}", {"spec": {"nodeName": NODE_NAME}})
        self._pods.store(bound)
        return True

    def _start(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        container = pod["spec"]["containers"][0]
        scheduled = _condition("PodScheduled", True)
        try:
            ip = self._free_ips[0] if self._free_ips else ""
            if not ip:
                raise PodNotReady("ContainerCreating", "no free pod IP on the node")
            pod_dir = self.work_root / f"{ns}_{name}"
            argv, env, cwd, term_path = self._prepare(pod, container, pod_dir, ip)
            executable = shutil.which(argv[0], path=env["PATH"]) if argv else None
            dns_name = self._dns_name(pod)
            command = [executable, *argv[1:]] if executable else []
            if dns_name is not None and command:
                try:
                    command = self.dns.command(command)
                except NoClusterDNS as e:
                    raise PodNotReady("RunContainerError", f"the test kubelet cannot give this pod DNS: {e}") from e
        except PodNotReady as e:
            waiting = {"waiting": {"reason": e.reason, "message": e.message}}
            self._patch_pod_status(
                pod,
                {
                    "phase": "Pending",
                    "hostIP": "127.0.0.1",
                    "conditions": [scheduled, _condition("Ready", False, "ContainersNotReady")],
                    "containerStatuses": [self._container_status(container, waiting, ready=False)],
                },
            )
            return
        self._free_ips.remove(ip)
        log_path = pod_dir / "container.log"
        started_at = now_rfc3339()
        if executable is None:  # what containerd reports for a missing binary
            self._free_ips.append(ip)
            message = f'exec: "{argv[0] if argv else ""}": executable file not found in $PATH'
            log_path.write_text(message + "\n")
            terminated = {"exitCode": 128, "reason": "StartError", "message": message}
            terminated |= {"startedAt": started_at, "finishedAt": started_at}
            self._patch_pod_status(pod, self._final_status(pod, container, "Failed", terminated, ""))
            return
        if dns_name is not None:
            self.dns.publish(ip, *dns_name)
        with log_path.open("ab") as log_file:
            popen = subprocess.Popen(
                command,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        grace = float(pod["spec"].get("terminationGracePeriodSeconds", 30))
        proc = _Process(
            ns,
            name,
            uid,
            popen,
            pod_dir,
            log_path,
            term_path,
            container.get("terminationMessagePolicy", "File"),
            ip,
            started_at,
            min(grace, self.max_grace),
        )
        self._procs[uid] = proc
        self.started_pods.append(name)
        self._patch_pod_status(
            pod,
            {
                "phase": "Running",
                "hostIP": "127.0.0.1",
                "podIP": ip,
                "podIPs": [{"ip": ip}],
                "startTime": started_at,
                "conditions": [
                    scheduled,
                    _condition("Initialized", True),
                    _condition("ContainersReady", True),
                    _condition("Ready", True),
                ],
                "containerStatuses": [
                    self._container_status(container, {"running": {"startedAt": started_at}}, ready=True, pid=popen.pid)
                ],
            },
        )

    @staticmethod
    def _container_status(
        container: Mapping[str, Any], state: dict[str, Any], *, ready: bool, pid: int | None = None
    ) -> dict[str, Any]:
        result: dict[str, Any] = {
            "name": container["name"],
            "image": container.get("image", ""),
            "imageID": "",
            "ready": ready,
            "started": "running" in state,
            "restartCount": 0,
            "state": state,
        }
        if pid is not None:
            result["containerID"] = f"process://{pid}"
        return result

    def _final_status(
        self, pod: Mapping[str, Any], container: Mapping[str, Any], phase: str, terminated: dict[str, Any], ip: str
    ) -> dict[str, Any]:
        status: dict[str, Any] = {
            "phase": phase,
            "hostIP": "127.0.0.1",
            "conditions": [
                _condition("PodScheduled", True),
                _condition("Initialized", True),
                _condition("ContainersReady", False, "PodCompleted" if phase == "Succeeded" else "PodFailed"),
                _condition("Ready", False, "PodCompleted" if phase == "Succeeded" else "PodFailed"),
            ],
            "containerStatuses": [self._container_status(container, {"terminated": terminated}, ready=False)],
        }
        if ip:
            status |= {"podIP": ip, "podIPs": [{"ip": ip}]}
        previous = pod.get("status") or {}
        if previous.get("startTime"):
            status["startTime"] = previous["startTime"]
        return status

    def _report_exit(self, pod: dict[str, Any], proc: _Process) -> None:
        code = proc.popen.returncode
        exit_code = 128 - code if code < 0 else code  # killed by signal N → 128 + N, as the runtime reports
        message = self._termination_message(proc, exit_code)
        terminated: dict[str, Any] = {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
            "startedAt": proc.started_at,
            "finishedAt": now_rfc3339(),
        }
        if message:
            terminated["message"] = message
        container = pod["spec"]["containers"][0]
        phase = "Succeeded" if exit_code == 0 else "Failed"
        self._patch_pod_status(pod, self._final_status(pod, container, phase, terminated, proc.ip))
        self._release(proc)

    def _termination_message(self, proc: _Process, exit_code: int) -> str:
        message = ""
        if proc.termination_path.exists():
            message = proc.termination_path.read_bytes()[:TERMINATION_MESSAGE_LIMIT].decode(errors="replace")
        if not message.strip() and proc.message_policy == "FallbackToLogsOnError" and exit_code != 0:
            data = proc.log_path.read_bytes() if proc.log_path.exists() else b""
            message = data[-LOG_TAIL_LIMIT:].decode(errors="replace")
        return message

    def _release(self, proc: _Process) -> None:
        self._procs.pop(proc.uid, None)
        self._finished[proc.uid] = proc
        if proc.ip and proc.ip not in self._free_ips:
            self._free_ips.append(proc.ip)

    def _signal(self, proc: _Process, sig: int) -> None:
        """SIGTERM goes to the process group, as the runtime's goes to PID 1, which forwards it.
        SIGKILL kills every process of the pod, as the end of a container's PID namespace does:
        also those in sessions of their own (torchrun starts its workers so)."""
        victims = _descendants(proc.popen.pid) if sig == signal.SIGKILL else []
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.popen.pid, sig)
        for pid in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def _terminate_deleted(self, pod: dict[str, Any], proc: _Process | None) -> None:
        """Graceful deletion: SIGTERM, SIGKILL after the grace period, then remove the pod (grace 0)."""
        if proc is not None and proc.popen.poll() is None:
            if proc.term_deadline is None:
                grace = min(float(pod["metadata"].get("deletionGracePeriodSeconds", proc.grace)), self.max_grace)
                proc.term_deadline = time.monotonic() + grace
                self._signal(proc, signal.SIGTERM if grace > 0 else signal.SIGKILL)
            elif time.monotonic() > proc.term_deadline:
                self._signal(proc, signal.SIGKILL)
            return
        if proc is not None:
            self._release(proc)
        if pod["spec"].get("nodeName"):
            self._delete_pod(pod, grace=0)

    def _terminate_gone(self, proc: _Process) -> None:
        if proc.popen.poll() is not None:
            self._release(proc)
            return
        if proc.term_deadline is None:
            proc.term_deadline = time.monotonic() + proc.grace
            self._signal(proc, signal.SIGTERM)
        elif time.monotonic() > proc.term_deadline:
            self._signal(proc, signal.SIGKILL)

    # ------------------------------------------------------------------ container environment

    def _get(self, path: str) -> dict[str, Any] | None:
        found = self._call_unless_gone("GET", path)
        return None if found is None else dict(found)

    def _prepare(
        self, pod: dict[str, Any], container: dict[str, Any], pod_dir: Path, ip: str
    ) -> tuple[list[str], dict[str, str], str, Path]:
        """Materialise volumes and resolve env/argv; raises PodNotReady while something is missing."""
        ns = pod["metadata"]["namespace"]
        volumes_dir = pod_dir / "volumes"
        files: dict[str, dict[str, bytes]] = {}  # volume name → {relative path: content}
        json_volumes: set[str] = set()
        claim_dirs: dict[str, Path] = {}  # volume name → the claim's directory, outside the pod's
        for volume in pod["spec"].get("volumes") or []:
            vname = volume["name"]
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                if self._get(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}") is None:
                    raise PodNotReady("ContainerCreating", f'persistentvolumeclaim "{claim}" not found')
                claim_dirs[vname] = self.work_root / "pvcs" / ns / claim
            elif "configMap" in volume or "secret" in volume:
                is_cm = "configMap" in volume
                source = volume["configMap"] if is_cm else volume["secret"]
                ref = source.get("name") if is_cm else source.get("secretName")
                kind = "configmaps" if is_cm else "secrets"
                obj = self._get(f"/api/v1/namespaces/{ns}/{kind}/{ref}")
                if obj is None:
                    if source.get("optional"):
                        files[vname] = {}
                        continue
                    raise PodNotReady(
                        "ContainerCreating",
                        f'MountVolume.SetUp failed for volume "{vname}" : {kind[:-1]} "{ref}" not found',
                    )
                data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
                if not is_cm:
                    data = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
                    data |= {k: v.encode() for k, v in (obj.get("stringData") or {}).items()}
                data |= {k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()}
                items = source.get("items")
                files[vname] = (
                    {item["path"]: data[item["key"]] for item in items if item["key"] in data} if items else data
                )
                if is_cm:
                    json_volumes.add(vname)
            else:
                files[vname] = {}  # emptyDir and anything else: an empty directory

        term_target = container.get("terminationMessagePath", "/dev/termination-log")
        term_path = pod_dir / "termination-log"
        mounts: list[tuple[str, Path]] = []
        for mount in container.get("volumeMounts") or []:
            host = claim_dirs.get(mount["name"], volumes_dir / mount["name"])
            if mount.get("subPath"):
                host = host / mount["subPath"]
            mounts.append((mount["mountPath"].rstrip("/") or "/", host))
        mounts.sort(key=lambda m: len(m[0]), reverse=True)

        def map_path(value: str) -> str:
            if value == term_target:
                return str(term_path)
            for mount_path, host in mounts:
                if value == mount_path or value.startswith(mount_path + "/"):
                    return str(host) + value[len(mount_path) :]
            if value.startswith("--") and "=" in value:  # --flag=/mounted/path
                flag, _, rest = value.partition("=")
                mapped = map_path(rest)
                return f"{flag}={mapped}" if mapped != rest else value
            return value

        def map_json(value: Any) -> Any:
            if isinstance(value, str):
                return ip if value == "0.0.0.0" else map_path(value)
            if isinstance(value, list):
                return [map_json(v) for v in value]
            if isinstance(value, dict):
                return {k: map_json(v) for k, v in value.items()}
            return value

        env = self._resolve_env(pod, container, ip)
        argv = [expand_vars(a, env) for a in [*(container.get("command") or []), *(container.get("args") or [])]]
        if not argv:
            # The images' ENTRYPOINT is `tini --`, a pass-through: command + args run as given.
            raise PodNotReady("RunContainerError", "the test kubelet knows no image entrypoint: set command or args")

        # Everything resolved: write the pod's filesystem.
        pod_dir.mkdir(parents=True, exist_ok=True)
        (pod_dir / "home").mkdir(exist_ok=True)
        term_path.write_bytes(b"")
        for vname, content in files.items():
            vdir = volumes_dir / vname
            vdir.mkdir(parents=True, exist_ok=True)
            for rel, payload in content.items():
                target = vdir / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                if vname in json_volumes and rel.endswith(".json"):
                    with contextlib.suppress(ValueError):  # not JSON after all: leave it as it is
                        payload = json.dumps(map_json(json.loads(payload)), indent=2).encode()
                target.write_bytes(payload)
        for _, host in mounts:
            host.mkdir(parents=True, exist_ok=True)
        self._pod_dirs[(pod["metadata"]["namespace"], pod["metadata"]["name"])] = pod_dir

        process_env = {key: map_path(value) for key, value in env.items()}
        process_env.update(self.extra_env)
        path = os.pathsep.join([*(str(d) for d in self.bin_dirs), os.environ.get("PATH", os.defpath)])
        process_env.update(
            {"PATH": path, "HOME": str(pod_dir / "home"), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        )
        cwd = map_path(container["workingDir"]) if container.get("workingDir") else str(pod_dir)
        Path(cwd).mkdir(parents=True, exist_ok=True)
        # argv[0] is the image's executable, and the "image" is this host: it is never mapped (a checkout
        # under /tmp would otherwise have its python rewritten into the pod's /tmp emptyDir).
        return [argv[0], *(map_path(a) for a in argv[1:])], process_env, cwd, term_path

    def _resolve_env(self, pod: dict[str, Any], container: dict[str, Any], ip: str) -> dict[str, str]:
        ns = pod["metadata"]["namespace"]
        env: dict[str, str] = {}
        secrets: dict[str, dict[str, Any] | None] = {}
        for item in container.get("env") or []:
            name = item["name"]
            if "valueFrom" not in item:
                env[name] = expand_vars(str(item.get("value", "")), env)
                continue
            source = item["valueFrom"]
            if "secretKeyRef" in source or "configMapKeyRef" in source:
                is_secret = "secretKeyRef" in source
                ref = source["secretKeyRef" if is_secret else "configMapKeyRef"]
                kind = "secrets" if is_secret else "configmaps"
                cache_key = f"{kind}/{ref['name']}"
                if cache_key not in secrets:
                    secrets[cache_key] = self._get(f"/api/v1/namespaces/{ns}/{cache_key}")
                obj = secrets[cache_key]
                value: str | None = None
                if obj is not None:
                    if is_secret and ref["key"] in (obj.get("data") or {}):
                        value = base64.b64decode(obj["data"][ref["key"]]).decode()
                    elif ref["key"] in (obj.get("stringData" if is_secret else "data") or {}):
                        value = str(obj["stringData" if is_secret else "data"][ref["key"]])
                if value is None:
                    if ref.get("optional"):
                        continue
                    what = "secret" if is_secret else "configmap"
                    message = (
                        f'{what} "{ref["name"]}" not found'
                        if obj is None
                        else f"couldn't find key {ref['key']} in {'Secret' if is_secret else 'ConfigMap'} "
                        f"{ns}/{ref['name']}"
                    )
                    raise PodNotReady("CreateContainerConfigError", message)
                env[name] = value
            elif "fieldRef" in source:
                env[name] = self._field_ref(pod, source["fieldRef"]["fieldPath"], ip)
            else:
                raise PodNotReady("CreateContainerConfigError", f"unsupported env source for {name}: {source}")
        return env

    @staticmethod
    def _field_ref(pod: Mapping[str, Any], path: str, ip: str) -> str:
        meta = pod["metadata"]
        simple = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "spec.nodeName": NODE_NAME,
            "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
            "status.podIP": ip,
            "status.hostIP": "127.0.0.1",
        }
        if path in simple:
            return str(simple[path])
        m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
        if m:
            return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
        raise PodNotReady("CreateContainerConfigError", f"unsupported fieldRef {path}")
