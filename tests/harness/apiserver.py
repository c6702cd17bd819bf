"""A real HTTP Kubernetes API on loopback for tests: kmock's emulator plus the apiserver semantics we rely on.

``kmock.KubernetesEmulator`` (0.8) gives discovery, error rendering, request parsing and the reaction DSL (tests can
still inject faults with ``api["patch", ...] << 500``). ``ApiServer`` serves list/watch/get/create/patch/put/delete
itself, from its own store, and is put together from one module per concern:

- ``store``: objects, the metadata the server owns, the ``status`` subresource, preconditions, name/label
  validation, defaults;
- ``schema_validation``: custom resources against their CRD's ``openAPIV3Schema`` (structural checks, CEL,
  pruning, ``fieldValidation``);
- ``watch``: watch streams with ``resourceVersion`` resumption and selector transitions;
- ``gc``: finalizers, graceful pod deletion, namespace deletion, garbage collection by ``ownerReferences``;
- ``tables``: ``meta.k8s.io/v1`` Tables for ``kubectl get`` (CRD ``additionalPrinterColumns``);
- ``openapi``: the ``/openapi/v3`` documents kubectl reads before it sends ``fieldValidation=Strict``;
- ``kmock_workarounds``: every workaround for kmock 0.8, marked ``WORKAROUND``;
- ``selectors``: label and field selectors.

This module holds the public surface (``ApiServer``, ``RunningApiServer``, ``run_apiserver``) and the request
handlers that tie those together. All state changes happen under ``_state_lock`` on the server's event loop;
``objects_of()``/``get_object()`` are safe from any thread.
"""

from __future__ import annotations

import asyncio
import copy
import threading
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import kmock
import yaml

from . import openapi
from .gc import GarbageCollector
from .kmock_workarounds import GO_TRUE, KmockWorkarounds, QuickShutdownServer
from .schema_validation import CustomResourceSchema, warning_header
from .selectors import FieldRequirement, Requirement, SelectorError, parse_field_selector, parse_label_selector
from .store import (
    CRDS,
    JOBS,
    NAMESPACES,
    PODS,
    SERVICES,
    ObjectStore,
    ObjKey,
    ResKey,
    api_error,
    merge_patch,
    now_rfc3339,
    random_suffix,
    strip_directives,
)
from .tables import PrinterColumn, builtin_columns, crd_columns, human_duration, table
from .watch import ResourceLog, WatchFilter, WatchStreams

__all__ = [
    "CRDS",
    "JOBS",
    "NAMESPACES",
    "PODS",
    "SERVICES",
    "ApiServer",
    "PrinterColumn",
    "RunningApiServer",
    "human_duration",
    "merge_patch",
    "now_rfc3339",
    "random_suffix",
    "run_apiserver",
]


@attrs.define(kw_only=True)
class ApiServer(KmockWorkarounds, WatchStreams, GarbageCollector, ObjectStore, kmock.KubernetesEmulator):  # type: ignore[misc]
    """An in-memory Kubernetes API server with the semantics listed in the module docstring."""

    bundled_resources: bool = True  # register the core/batch/... resources that kmock bundles (a k3s snapshot)
    require_namespaces: bool = True  # creating in a missing namespace is 404, as in a real cluster
    gc_dangling_dependents: bool = True  # delete objects whose owners (by uid) do not exist, as the real GC does
    max_events_per_resource: int = 20_000  # watch history kept for resourceVersion resumption
    request_log_limit: int = 500  # kmock keeps every request for assertions; keep only the recent ones

    # Optional: serve pods/<name>/log (set by Cluster). Called with (namespace, name); None means 404.
    pod_log_provider: Callable[[str, str], str | None] | None = None

    _store: dict[ResKey, dict[tuple[str | None, str], dict[str, Any]]] = attrs.field(factory=dict, init=False)
    _by_uid: dict[str, ObjKey] = attrs.field(factory=dict, init=False)
    _dependents: dict[str, set[ObjKey]] = attrs.field(factory=dict, init=False)
    _logs: dict[ResKey, ResourceLog] = attrs.field(factory=dict, init=False)
    _columns: dict[ResKey, list[PrinterColumn]] = attrs.field(factory=dict, init=False)
    _schemas: dict[ResKey, CustomResourceSchema] = attrs.field(factory=dict, init=False)
    _rv: int = attrs.field(default=0, init=False)
    _state_lock: threading.RLock = attrs.field(factory=threading.RLock, init=False)
    _loop: asyncio.AbstractEventLoop | None = attrs.field(default=None, init=False)
    _closing: bool = attrs.field(default=False, init=False)
    # uids whose deletion asked for propagationPolicy=Orphan (honoured when the object is finally removed)
    _orphaned: set[str] = attrs.field(factory=set, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()  # kmock registers discovery and the _serve_* fallbacks (ours, by override)
        # WORKAROUND (kmock 0.8): it routes PUT (replace) to no action at all; serve it like a real server.
        self.fallback[kmock.method.PUT] << self._serve_replace
        if self.bundled_resources:
            with warnings.catch_warnings():  # WORKAROUND (kmock 0.8): deprecated importlib.resources.read_binary
                warnings.simplefilter("ignore", DeprecationWarning)
                self.resources.load_bundled()
        for name in ("default", "kube-system"):
            self.create_object(NAMESPACES, None, {"metadata": {"name": name}})

    # ------------------------------------------------------------------ public, thread-safe accessors
    # (and close_watches(), from WatchStreams)

    def register_crd(self, path: str | Path) -> list[ResKey]:
        """Register every served version of the CRD in a YAML file; also store the CRD object itself."""
        doc = yaml.safe_load(Path(path).read_text())
        spec = doc["spec"]
        names = spec["names"]
        keys: list[ResKey] = []
        for version in spec["versions"]:
            if not version.get("served", True):
                continue
            key: ResKey = (spec["group"], version["name"], names["plural"])
            subresources = set((version.get("subresources") or {}).keys())
            self.resources[f"{key[0]}/{key[1]}/{key[2]}"] = kmock.ResourceInfo(
                kind=names["kind"],
                singular=names.get("singular", names["kind"].lower()),
                shortnames=set(names.get("shortNames", [])),
                categories=set(names.get("categories", [])),
                verbs={"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"},
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                subresources=subresources,
            )
            self._columns[key] = crd_columns(version)
            schema = (version.get("schema") or {}).get("openAPIV3Schema")
            if schema:
                self._schemas[key] = CustomResourceSchema(spec["group"], version["name"], names["kind"], schema)
            keys.append(key)
        crd = copy.deepcopy(doc)
        crd["status"] = {
            "acceptedNames": names,
            "storedVersions": [v["name"] for v in spec["versions"] if v.get("storage")],
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts"},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted"},
            ],
        }
        with self._state_lock:
            if (None, crd["metadata"]["name"]) not in self._store.get(CRDS, {}):
                self._create(CRDS, None, crd, keep_status=True)
        return keys

    def printer_columns(self, group: str, version: str, plural: str) -> list[PrinterColumn]:
        return list(self._columns.get((group, version, plural), []))

    def objects_of(self, group: str, version: str, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Deep copies of the live objects of a resource (including ones marked for deletion), sorted by key."""
        with self._state_lock:
            objs = self._store.get((group, version, plural), {})
            return [
                copy.deepcopy(obj)
                for (ns, _), obj in sorted(objs.items(), key=lambda kv: (kv[0][0] or "", kv[0][1]))
                if namespace is None or ns == namespace
            ]

    def get_object(
        self, group: str, version: str, plural: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        with self._state_lock:
            obj = self._store.get((group, version, plural), {}).get((namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def create_object(self, res: ResKey, namespace: str | None, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create an object directly (not over HTTP), e.g. to seed a test. Returns a copy."""
        with self._state_lock:
            return copy.deepcopy(self._create(res, namespace, dict(body)))

    @property
    def resource_version(self) -> int:
        return self._rv

    # ------------------------------------------------------------------ serving (kmock's fallbacks)
    # Watches are served by WatchStreams, discovery by KmockWorkarounds; state changes go through ObjectStore.

    async def _serve_list(self, request: kmock.Request) -> kmock.Payload:
        # WORKAROUND (kmock 0.8): only ``watch=true`` makes a watch; the kubernetes client sends ``watch=True``
        # (the real server parses it as a Go bool: 1, t, T, true, True, TRUE).
        if request.params.get("watch") in GO_TRUE:
            return await self._serve_watch(request)
        res, info = self._resource(request)
        labels, fields = self._selectors(request)
        watch = WatchFilter(request.namespace, None, labels, fields)
        with self._state_lock:
            items = [obj for _, obj in self._sorted(res) if watch.matches(obj)]
            rv = self._rv
        if self._wants_table(request):
            return self._table(res, items, rv)
        # WORKAROUND (kmock 0.8): its lists lack kind/apiVersion (kubectl: "Object 'Kind' is missing").
        return {
            "apiVersion": self._api_version(res),
            "kind": f"{info.kind or res[2].capitalize()}List",
            "metadata": {"resourceVersion": str(rv)},
            "items": items,
        }

    async def _serve_fetch(self, request: kmock.Request) -> kmock.Payload:
        res, _ = self._resource(request)
        assert request.name is not None
        if request.subresource == "log" and res == PODS:
            return self._serve_pod_log(request)
        if request.subresource not in (None, "status"):
            raise api_error(404, "NotFound", f"the server could not find the requested resource ({request.url.path})")
        with self._state_lock:
            obj = self._get_or_404(res, request.namespace, request.name)
            rv = self._rv
        if self._wants_table(request):
            return self._table(res, [obj], rv)
        return obj

    def _serve_pod_log(self, request: kmock.Request) -> kmock.Payload:
        assert request.namespace is not None and request.name is not None
        with self._state_lock:
            self._get_or_404(PODS, request.namespace, request.name)
        text = self.pod_log_provider(request.namespace, request.name) if self.pod_log_provider else None
        if text is None:
            raise api_error(400, "BadRequest", f'container of pod "{request.name}" has no logs')
        tail = request.params.get("tailLines")
        if tail is not None:
            text = "".join(text.splitlines(keepends=True)[-int(tail) :])
        return text.encode()

    async def _serve_create(self, request: kmock.Request) -> kmock.Payload:
        res, _ = self._resource(request)
        if request.name is not None:  # POST to a subresource (binding, eviction): not emulated
            raise api_error(405, "MethodNotAllowed", f"POST is not supported on {request.url.path}")
        if not isinstance(request.data, Mapping):
            raise api_error(400, "BadRequest", "the request body must be a JSON object")
        dry_run = "dryRun" in request.params
        warnings: list[str] = []
        with self._state_lock:
            obj = self._create(
                res,
                request.namespace,
                dict(request.data),
                dry_run=dry_run,
                field_validation=request.params.get("fieldValidation"),
                warnings=warnings,
            )
        return self._response(obj, warnings, status=201)

    async def _serve_update(self, request: kmock.Request) -> kmock.Payload:
        res, _ = self._resource(request)
        assert request.name is not None
        content_type = next((v for k, v in request.headers.items() if k.lower() == "content-type"), "")
        body: Any = request.data
        if "apply-patch" in content_type:  # server-side apply: a YAML/JSON document, merged (no field ownership)
            body = yaml.safe_load(request.text)
        if isinstance(body, list):
            patch: Any = ("json", body)
        elif isinstance(body, Mapping):
            # Merge patch and strategic merge patch alike (the kubernetes client labels dict bodies as
            # json-patch+json; we go by the body's shape as kmock does).
            patch = ("merge", strip_directives(body))
        else:
            raise api_error(400, "BadRequest", "the patch body must be a JSON object or array")
        field_validation = request.params.get("fieldValidation")
        warnings: list[str] = []
        with self._state_lock:
            if "apply-patch" in content_type and (request.namespace, request.name) not in self._store.get(res, {}):
                applied = dict(body)
                applied.setdefault("metadata", {})["name"] = request.name
                created = self._create(
                    res, request.namespace, applied, field_validation=field_validation, warnings=warnings
                )
                return self._response(created, warnings, status=201)
            updated = self._update(
                res,
                request.namespace,
                request.name,
                patch,
                request.subresource,
                dry_run="dryRun" in request.params,
                field_validation=field_validation,
                warnings=warnings,
            )
        return self._response(updated, warnings)

    async def _serve_replace(self, request: kmock.Request) -> kmock.Payload:
        res, _ = self._resource(request)
        if request.name is None:
            raise api_error(405, "MethodNotAllowed", "PUT needs an object URL")
        if not isinstance(request.data, Mapping):
            raise api_error(400, "BadRequest", "the request body must be a JSON object")
        warnings: list[str] = []
        with self._state_lock:
            replaced = self._update(
                res,
                request.namespace,
                request.name,
                ("replace", dict(request.data)),
                request.subresource,
                dry_run="dryRun" in request.params,
                field_validation=request.params.get("fieldValidation"),
                warnings=warnings,
            )
        return self._response(replaced, warnings)

    @staticmethod
    def _response(obj: dict[str, Any], warnings: list[str], status: int = 200) -> kmock.Response:
        headers = {"Warning": warning_header(warnings)} if warnings else None
        return kmock.Response(status=status, payload=obj, headers=headers)

    async def _serve_delete(self, request: kmock.Request) -> kmock.Payload:
        res, _ = self._resource(request)
        assert request.name is not None
        options: dict[str, Any] = dict(request.data) if isinstance(request.data, Mapping) else {}
        for key in ("gracePeriodSeconds", "propagationPolicy"):
            if key in request.params:
                options[key] = request.params[key]
        with self._state_lock:
            obj = self._get_or_404(res, request.namespace, request.name)
            preconditions = options.get("preconditions") or {}
            for field in ("uid", "resourceVersion"):
                if preconditions.get(field) and preconditions[field] != obj["metadata"].get(field):
                    raise api_error(409, "Conflict", f"Precondition failed: {field} in precondition does not match")
            if "dryRun" in request.params or "dryRun" in options:
                return obj
            grace = options.get("gracePeriodSeconds")
            orphan = options.get("propagationPolicy") == "Orphan" or options.get("orphanDependents") is True
            return self._delete((res, request.namespace, request.name), grace, orphan=orphan)

    def _serve_openapi(self, request: kmock.Request) -> kmock.Payload:
        served = []
        for res in self._get_resources():
            if res.plural and "/" not in res.plural:
                info = self.resources[res]
                kind = info.kind or res.plural.capitalize()
                custom = self._schemas.get((res.group or "", res.version or "", res.plural))
                served.append(
                    openapi.ServedResource(
                        res.group or "",
                        res.version or "",
                        res.plural,
                        kind,
                        bool(info.namespaced),
                        dict(custom.schema) if custom else None,
                    )
                )
        path = request.url.path.rstrip("/")
        if path == openapi.ROOT:
            return openapi.root_document(served)
        wanted = path.removeprefix(openapi.ROOT + "/")
        members = [res for res in served if openapi.group_version_path(res.group, res.version) == wanted]
        if not members:
            raise api_error(404, "NotFound", f"the server could not find the requested resource ({path})")
        return openapi.group_version_document(members)

    def _resource(self, request: kmock.Request) -> tuple[ResKey, kmock.ResourceInfo]:
        res = request.resource
        if res is None or res.plural is None or res not in self.resources:
            raise api_error(404, "NotFound", f"the server could not find the requested resource ({request.url.path})")
        info = self.resources[res]
        key: ResKey = (res.group or "", res.version or "", res.plural)
        if request.name is not None and info.namespaced and request.namespace is None:
            raise api_error(404, "NotFound", f"the server could not find the requested resource ({request.url.path})")
        if not info.namespaced and request.namespace is not None:
            raise api_error(404, "NotFound", f"the server could not find the requested resource ({request.url.path})")
        return key, info

    @staticmethod
    def _selectors(request: kmock.Request) -> tuple[list[Requirement], list[FieldRequirement]]:
        try:
            return (
                parse_label_selector(request.params.get("labelSelector")),
                parse_field_selector(request.params.get("fieldSelector")),
            )
        except SelectorError as e:
            raise api_error(400, "BadRequest", str(e)) from None

    @staticmethod
    def _wants_table(request: kmock.Request) -> bool:
        accept = next((v for k, v in request.headers.items() if k.lower() == "accept"), "")
        return "as=Table" in accept

    def _table(self, res: ResKey, items: list[dict[str, Any]], rv: int) -> dict[str, Any]:
        return table(self._columns.get(res) or builtin_columns(res), items, rv)


class RunningApiServer:
    """An ``ApiServer`` served over HTTP on 127.0.0.1 (random port) by its own event loop in a background thread."""

    def __init__(self, api: ApiServer | None = None, *, crd_paths: list[Path] | tuple[Path, ...] = ()) -> None:
        self.api = api if api is not None else ApiServer()
        for path in crd_paths:
            self.api.register_crd(path)
        self.url = ""
        self.kubeconfig: Path | None = None  # set by write_kubeconfig()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="kubetune-test-apiserver", daemon=True)

    def start(self, timeout: float = 30.0) -> RunningApiServer:
        if self._thread.is_alive() or self._ready.is_set():
            return self
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the test API server did not start")
        if self._error is not None:
            raise RuntimeError("the test API server failed to start") from self._error
        return self

    def stop(self, timeout: float = 15.0) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)

    def __enter__(self) -> RunningApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # reported to start(); a failure after startup only ends the thread
            self._error = e
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with self.api, kmock.Server(self.api, server_cls=QuickShutdownServer) as server:
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()
            self.api.close_watches()  # long-lived watch handlers end now, so the HTTP shutdown does not wait
            await asyncio.sleep(0.05)

    def write_kubeconfig(self, path: str | Path) -> Path:
        """A kubeconfig for kubectl/kopf/the kubernetes client: this server, a dummy token, namespace default."""
        path = Path(path)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kubetune-test", "cluster": {"server": self.url, "insecure-skip-tls-verify": True}}],
            "users": [{"name": "kubetune-test", "user": {"token": "kubetune-test-token"}}],
            "contexts": [
                {
                    "name": "kubetune-test",
                    "context": {"cluster": "kubetune-test", "user": "kubetune-test", "namespace": "default"},
                }
            ],
            "current-context": "kubetune-test",
            "preferences": {},
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.kubeconfig = path
        return path

    def api_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` for this server (the caller closes it)."""
        import kubernetes.client

        configuration = kubernetes.client.Configuration()
        configuration.host = self.url
        configuration.api_key = {"authorization": "kubetune-test-token"}
        configuration.api_key_prefix = {"authorization": "Bearer"}
        return kubernetes.client.ApiClient(configuration)


def run_apiserver(crd_paths: list[Path] | tuple[Path, ...] = (), **options: Any) -> RunningApiServer:
    """Start an ``ApiServer`` (options are its attributes) with the given CRDs; use as a context manager."""
    return RunningApiServer(ApiServer(**options), crd_paths=crd_paths).start()
