"""A real HTTP Kubernetes API on loopback for tests: kmock's emulator plus the apiserver semantics we rely on.

``kmock.KubernetesEmulator`` (0.8) gives discovery, error rendering, request parsing and the reaction DSL
(tests can still inject faults with ``api["patch", ...] << 500``). It keeps objects as plain merged dicts,
though, with none of the server-side behaviour an operator depends on. ``ApiServer`` keeps its own store
and serves list/watch/get/create/patch/put/delete itself:

- metadata the server owns: ``uid``, ``creationTimestamp``, ``resourceVersion`` (one global counter),
  ``generation`` (bumped only when ``spec`` changes), ``generateName``, the namespace from the URL;
- the ``status`` subresource split for every resource that declares it (CRDs via ``register_crd``);
- label and field selectors on list and watch, ``resourceVersion`` resumption of watches (410 when too old);
- ``kind``/``apiVersion``/``metadata.resourceVersion`` on lists (kubectl and the kubernetes client need them);
- ``/api/v1/namespaces`` (kmock's path parser crashes on it), with ``default`` and ``kube-system`` pre-created;
- finalizers + ``deletionTimestamp``, graceful deletion of pods bound to a node, and garbage collection
  by ``ownerReferences`` (what kube-controller-manager does);
- ``meta.k8s.io/v1`` Table rendering for ``kubectl get`` from the CRD's ``additionalPrinterColumns``;
- name and label validation (422 ``Invalid``), ``resourceVersion`` preconditions (409 ``Conflict``).

All state changes happen on the server's event loop; ``objects_of()``/``get_object()`` are safe from any thread.
"""

from __future__ import annotations

import asyncio
import bisect
import copy
import dataclasses
import datetime
import json
import math
import random
import re
import threading
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp.test_utils
import aiohttp.web
import attrs
import jsonpatch
import kmock
import yaml

from . import openapi
from .schema_validation import CustomResourceSchema, FieldError, invalid_error, warning_header
from .selectors import (
    FieldRequirement,
    Requirement,
    SelectorError,
    fields_match,
    labels_match,
    parse_field_selector,
    parse_label_selector,
)

ResKey = tuple[str, str, str]  # (group, version, plural); group "" is the core API
ObjKey = tuple[ResKey, str | None, str]  # (resource, namespace or None, name)

NAMESPACES: ResKey = ("", "v1", "namespaces")
PODS: ResKey = ("", "v1", "pods")
SERVICES: ResKey = ("", "v1", "services")
JOBS: ResKey = ("batch", "v1", "jobs")
CRDS: ResKey = ("apiextensions.k8s.io", "v1", "customresourcedefinitions")

# Placeholder plural for the /api/v1/namespaces workaround (see ApiServer.__call__).
_NAMESPACES_PLACEHOLDER = "kubetune-harness-namespaces"
_NAMESPACES_PATH = re.compile(r"^/api/v1/namespaces(?P<rest>/[^/]+(?:/(?:status|finalize))?)?/?$")

_GO_TRUE = {"1", "t", "T", "true", "True", "TRUE"}
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


def parse_rfc3339(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def human_duration(seconds: float) -> str:
    """Go's ``duration.HumanDuration`` as kubectl shows ages: ``42s``, ``3m10s``, ``5h``, ``2d3h``."""
    if seconds < -1:
        return "<invalid>"
    s = max(int(seconds), 0)
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if days < 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    return f"{days}d" if days < 730 else f"{days // 365}y"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch; returns a new value and never mutates its arguments."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _strip_directives(value: Any) -> Any:
    """Drop strategic-merge-patch directives (``$patch``, ``$setElementOrder/...``); the rest is a merge patch."""
    if isinstance(value, Mapping):
        return {k: _strip_directives(v) for k, v in value.items() if not str(k).startswith("$")}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return value


def json_path(obj: Mapping[str, Any], path: str) -> Any:
    """Evaluate the simple JSONPaths of printer columns (``.status.phase``); None when absent."""
    current: Any = obj
    for step in path.strip().lstrip("$").strip(".").split("."):
        if not step:
            continue
        if not isinstance(current, Mapping):
            return None
        current = current.get(step)
    return current


def api_error(status: int, reason: str, message: str, **details: Any) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=status, reason=reason, message=message, details=details)


@dataclasses.dataclass(frozen=True)
class PrinterColumn:
    name: str
    type: str
    json_path: str
    format: str = ""
    description: str = ""
    priority: int = 0

    def definition(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "format": self.format,
            "description": self.description,
            "priority": self.priority,
        }

    def cell(self, obj: Mapping[str, Any]) -> Any:
        value = json_path(obj, self.json_path)
        if value is None:
            return None
        if self.type == "date":
            try:
                age = datetime.datetime.now(tz=datetime.UTC) - parse_rfc3339(str(value))
            except ValueError:
                return str(value)
            return human_duration(age.total_seconds())
        if self.type == "string":
            return value if isinstance(value, str) else json.dumps(value)
        return value


# Columns for built-in kinds (the real server has Go printers; these are a small, stable subset).
_AGE = PrinterColumn("Age", "date", ".metadata.creationTimestamp")
_BUILTIN_COLUMNS: dict[ResKey, list[PrinterColumn]] = {
    PODS: [
        PrinterColumn("Status", "string", ".status.phase"),
        _AGE,
        PrinterColumn("IP", "string", ".status.podIP", priority=1),
        PrinterColumn("Node", "string", ".spec.nodeName", priority=1),
    ],
    JOBS: [
        PrinterColumn("Completions", "integer", ".spec.completions"),
        PrinterColumn("Succeeded", "integer", ".status.succeeded"),
        PrinterColumn("Failed", "integer", ".status.failed"),
        _AGE,
    ],
    NAMESPACES: [PrinterColumn("Status", "string", ".status.phase"), _AGE],
}


@dataclasses.dataclass
class _Event:
    rv: int
    type: str
    obj: dict[str, Any]
    old: dict[str, Any] | None  # the previous state, to turn label-selector transitions into ADDED/DELETED
    _lines: dict[str, bytes] = dataclasses.field(default_factory=dict)

    def line(self, event_type: str) -> bytes:
        # Serialised once per event type and shared by every watcher.
        if event_type not in self._lines:
            self._lines[event_type] = json.dumps({"type": event_type, "object": self.obj}).encode() + b"\n"
        return self._lines[event_type]


class _ResourceLog:
    """The recent watch events of one resource, shared by all its watchers."""

    def __init__(self) -> None:
        self.events: list[_Event] = []
        self.base = 0  # how many events were trimmed from the front (absolute position of events[0])
        self.trimmed_rv = 0  # watches from a resourceVersion older than this get 410 Gone
        self.wakeup = asyncio.Event()


@dataclasses.dataclass(frozen=True)
class _Watch:
    namespace: str | None
    name: str | None
    labels: list[Requirement]
    fields: list[FieldRequirement]

    def matches(self, obj: Mapping[str, Any] | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata", {})
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        if self.name is not None and meta.get("name") != self.name:
            return False
        return labels_match(self.labels, obj) and fields_match(self.fields, obj)


class QuickShutdownServer(aiohttp.test_utils.RawTestServer):
    """aiohttp's test server with a 1 s shutdown timeout instead of 60 s (watch handlers are long-lived)."""

    async def _make_runner(self, debug: bool = True, **kwargs: Any) -> aiohttp.web.ServerRunner:
        server = aiohttp.web.Server(self._handler, loop=self._loop, debug=debug, **kwargs)
        return aiohttp.web.ServerRunner(server, debug=debug, shutdown_timeout=1.0, **kwargs)


@attrs.define(kw_only=True)
class ApiServer(kmock.KubernetesEmulator):  # type: ignore[misc]
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
    _logs: dict[ResKey, _ResourceLog] = attrs.field(factory=dict, init=False)
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
        # kmock routes PUT (replace) to no action at all; serve it like a real server.
        self.fallback[kmock.method.PUT] << self._serve_replace
        if self.bundled_resources:
            with warnings.catch_warnings():  # kmock 0.8 uses the deprecated importlib.resources.read_binary
                warnings.simplefilter("ignore", DeprecationWarning)
                self.resources.load_bundled()
        for name in ("default", "kube-system"):
            self.create_object(NAMESPACES, None, {"metadata": {"name": name}})

    # ------------------------------------------------------------------ public, thread-safe accessors

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
            self._columns[key] = [
                PrinterColumn(
                    name=col["name"],
                    type=col.get("type", "string"),
                    json_path=col["jsonPath"],
                    format=col.get("format", ""),
                    description=col.get("description", ""),
                    priority=int(col.get("priority", 0)),
                )
                for col in version.get("additionalPrinterColumns", [])
            ]
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

    def close_watches(self) -> None:
        """End every watch stream now and refuse new ones (called before the HTTP server shuts down)."""
        self._closing = True
        with self._state_lock:
            for log in self._logs.values():
                self._wake(log)

    # ------------------------------------------------------------------ request plumbing

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        self._loop = asyncio.get_running_loop()
        # WORKAROUND (kmock 0.8): parsing.parse_path() treats a leading "namespaces" segment as the
        # namespace prefix of a namespaced resource, so "/api/v1/namespaces" crashes on unpacking and
        # "/api/v1/namespaces/x" parses with no resource. Rewrite these paths to a placeholder plural
        # that parses cleanly; _handle() turns the placeholder back into the "namespaces" resource.
        # Protobuf bodies (kubectl sends them for built-in kinds) cannot be decoded here: answer 415 like a
        # server without protobuf support; client-go then retries the request with JSON.
        if "protobuf" in raw_request.headers.get("Content-Type", ""):
            return aiohttp.web.json_response(
                {
                    "apiVersion": "v1",
                    "kind": "Status",
                    "metadata": {},
                    "status": "Failure",
                    "reason": "UnsupportedMediaType",
                    "message": "the body of the request was in an unknown format - accepted media types include: "
                    "application/json, application/merge-patch+json, application/json-patch+json",
                    "code": 415,
                },
                status=415,
            )
        match = _NAMESPACES_PATH.match(raw_request.path)
        if match:
            path = f"/api/v1/{_NAMESPACES_PLACEHOLDER}{match['rest'] or ''}"
            raw_request = raw_request.clone(rel_url=raw_request.rel_url.with_path(path))
        try:
            return await super().__call__(raw_request)
        finally:
            self._trim_request_log()

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if request.resource is not None and request.resource.plural == _NAMESPACES_PLACEHOLDER:
            fixed = attrs.evolve(request, resource=kmock.resource("", "v1", "namespaces"))
            if self._requests and self._requests[-1] is request:
                self._requests[-1] = fixed
            request = fixed
        # Fast path. kmock decides whether a reaction sees a request by re-filtering its whole request log
        # (O(requests) per request: seconds per request after a few thousand). When no test-defined reaction
        # exists (only our fallbacks), resource requests go straight to the _serve_* methods.
        if request.url.path.rstrip("/").startswith(openapi.ROOT):
            # kmock has no /openapi; kubectl needs it whether or not a test added reactions (see openapi.py).
            return await kmock.Response(payload=self._serve_openapi(request))(request)
        handler = self._direct_handler(request)
        if handler is not None and not any(payload.priorities[:1] != (-math.inf,) for payload in self._payloads):
            return await kmock.Response(payload=await handler(request))(request)
        # Skip KubernetesEmulator._handle(): it mirrors every write into kmock.objects (a second, history-keeping
        # store without our semantics). The state lives in self._store and changes in the _serve_* fallbacks, so a
        # reaction that intercepts a request (e.g. ``api["patch", ...] << 500``) also prevents its state change.
        return await super(kmock.KubernetesEmulator, self)._handle(request)

    def _serve_openapi(self, request: kmock.Request) -> kmock.Payload:
        served = []
        for res in self._get_resources():
            if res.plural and "/" not in res.plural:
                info = self.resources[res]
                kind = info.kind or res.plural.capitalize()
                served.append(
                    openapi.ServedResource(res.group or "", res.version or "", res.plural, kind, bool(info.namespaced))
                )
        path = request.url.path.rstrip("/")
        if path == openapi.ROOT:
            return openapi.root_document(served)
        wanted = path.removeprefix(openapi.ROOT + "/")
        members = [res for res in served if openapi.group_version_path(res.group, res.version) == wanted]
        if not members:
            raise api_error(404, "NotFound", f"the server could not find the requested resource ({path})")
        return openapi.group_version_document(members)

    def _direct_handler(self, request: kmock.Request) -> Callable[[kmock.Request], Any] | None:
        discovery = {"/version": self._serve_server_version, "/api": self._serve_api, "/apis": self._serve_apis}
        path = request.url.path.rstrip("/") or "/"
        if path in discovery:
            return discovery[path]
        if request.resource is None:
            return None  # other non-API paths: kmock's routes (404)
        if not request.resource.plural:
            if request.resource.version:
                return self._serve_version
            return self._serve_group if request.resource.group else None
        if request.method == kmock.method.PUT:
            return self._serve_replace
        return {
            kmock.action.LIST: self._serve_list,
            kmock.action.WATCH: self._serve_watch,
            kmock.action.FETCH: self._serve_fetch,
            kmock.action.CREATE: self._serve_create,
            kmock.action.UPDATE: self._serve_update,
            kmock.action.DELETE: self._serve_delete,
        }.get(request.action)

    def _trim_request_log(self) -> None:
        limit = self.request_log_limit
        if len(self._requests) > 2 * limit:
            del self._requests[:-limit]
            for payload in self._payloads:
                if len(payload._requests) > 2 * limit:
                    del payload._requests[:-limit]

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

    # ------------------------------------------------------------------ serving (kmock fallbacks)

    async def _serve_version(self, request: kmock.Request) -> kmock.Payload:
        # WORKAROUND (kmock 0.8): its APIResourceList says groupVersion "/v1" for the core API (kubectl then
        # finds no core types) and repeats shortNames/categories on subresources ("ftj" matches "ftj/status").
        assert request.resource is not None
        group, version = request.resource.group or "", request.resource.version or ""
        resources = [
            res for res in self._get_resources() if res.group == group and res.version == version and res.plural
        ]
        if not resources and group:
            raise api_error(404, "NotFound", f"the server could not find the requested resource ({request.url.path})")
        entries: list[dict[str, Any]] = []
        for res in sorted(resources, key=lambda r: r.plural or ""):
            info = self.resources[res]
            assert res.plural is not None
            kind = info.kind or res.plural.capitalize()
            entries.append(
                {
                    "name": res.plural,
                    "singularName": info.singular or "",
                    "namespaced": bool(info.namespaced),
                    "kind": kind,
                    "verbs": sorted(info.verbs),
                    **({"shortNames": sorted(info.shortnames)} if info.shortnames else {}),
                    **({"categories": sorted(info.categories)} if info.categories else {}),
                }
            )
            for sub in sorted(info.subresources):
                verbs = (
                    ["get", "patch", "update"]
                    if sub in ("status", "scale")
                    else ["get"]
                    if sub == "log"
                    else ["create"]
                )
                entries.append(
                    {
                        "name": f"{res.plural}/{sub}",
                        "singularName": "",
                        "namespaced": bool(info.namespaced),
                        "kind": kind,
                        "verbs": verbs,
                    }
                )
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": self._api_version((group, version, "")),
            "resources": entries,
        }

    async def _serve_list(self, request: kmock.Request) -> kmock.Payload:
        # WORKAROUND (kmock 0.8): only ``watch=true`` makes a watch; the kubernetes client sends ``watch=True``
        # (the real server parses it as a Go bool: 1, t, T, true, True, TRUE).
        if request.params.get("watch") in _GO_TRUE:
            return await self._serve_watch(request)
        res, info = self._resource(request)
        labels, fields = self._selectors(request)
        watch = _Watch(request.namespace, None, labels, fields)
        with self._state_lock:
            items = [obj for _, obj in self._sorted(res) if watch.matches(obj)]
            rv = self._rv
        if self._wants_table(request):
            return self._table(res, items, rv)
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
            patch = ("merge", _strip_directives(body))
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

    async def _serve_watch(self, request: kmock.Request) -> kmock.Payload:
        res, _ = self._resource(request)
        labels, fields = self._selectors(request)
        watch = _Watch(request.namespace, request.name, labels, fields)
        timeout = float(request.params["timeoutSeconds"]) if request.params.get("timeoutSeconds") else None
        since = request.params.get("resourceVersion") or ""
        if since and not since.isdigit():
            raise api_error(400, "BadRequest", f"invalid resourceVersion {since!r}")
        stream = self._watch_stream(res, watch, int(since or 0), timeout)
        return kmock.Response(headers={"Content-Type": "application/json"}, payload=stream)

    async def _watch_stream(
        self, res: ResKey, watch: _Watch, since: int, timeout: float | None
    ) -> AsyncIterator[bytes]:
        yield b""  # send the headers now: the client waits for them even when no event comes
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        with self._state_lock:
            log = self._log(res)
            initial: list[bytes] = []
            if since == 0:  # no resourceVersion: the current state as ADDED events, then changes
                for _, obj in self._sorted(res):
                    if watch.matches(obj):
                        initial.append(json.dumps({"type": "ADDED", "object": obj}).encode() + b"\n")
                position = log.base + len(log.events)
            elif since < log.trimmed_rv:
                initial.append(self._gone_line(since))
                position = -1
            else:
                position = log.base + bisect.bisect_right(log.events, since, key=lambda e: e.rv)
        for line in initial:
            yield line
        if position < 0:
            return
        while not self._closing:
            with self._state_lock:
                if position < log.base:  # this watcher fell behind the trimmed history
                    gone: bytes | None = self._gone_line(since)
                    batch: list[_Event] = []
                else:
                    gone = None
                    batch = log.events[position - log.base :]
                    position += len(batch)
                wakeup = log.wakeup
            if gone is not None:
                yield gone
                return
            for event in batch:
                since = event.rv
                line = self._translate(event, watch)
                if line is not None:
                    yield line
            if batch:
                continue
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return
            try:
                async with asyncio.timeout(remaining):
                    await wakeup.wait()
            except TimeoutError:
                return

    @staticmethod
    def _translate(event: _Event, watch: _Watch) -> bytes | None:
        """What a watcher with selectors sees: objects entering/leaving its selection are ADDED/DELETED."""
        now = watch.matches(event.obj)
        if event.type == "MODIFIED":
            before = watch.matches(event.old)
            if now and before:
                return event.line("MODIFIED")
            if now:
                return event.line("ADDED")
            if before:
                return event.line("DELETED")
            return None
        return event.line(event.type) if now else None

    @staticmethod
    def _gone_line(since: int) -> bytes:
        status = {
            "apiVersion": "v1",
            "kind": "Status",
            "metadata": {},
            "status": "Failure",
            "message": f"too old resource version: {since}",
            "reason": "Expired",
            "code": 410,
        }
        return json.dumps({"type": "ERROR", "object": status}).encode() + b"\n"

    # ------------------------------------------------------------------ state changes (under _state_lock)

    def _api_version(self, res: ResKey) -> str:
        return f"{res[0]}/{res[1]}" if res[0] else res[1]

    def _kind(self, res: ResKey) -> str:
        return self._info(res).kind or res[2].capitalize()

    def _info(self, res: ResKey) -> kmock.ResourceInfo:
        return self.resources[kmock.resource(res[0], res[1], res[2])]

    def _log(self, res: ResKey) -> _ResourceLog:
        if res not in self._logs:
            self._logs[res] = _ResourceLog()
        return self._logs[res]

    def _sorted(self, res: ResKey) -> list[tuple[tuple[str | None, str], dict[str, Any]]]:
        return sorted(self._store.get(res, {}).items(), key=lambda kv: (kv[0][0] or "", kv[0][1]))

    def _get_or_404(self, res: ResKey, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self._store.get(res, {}).get((namespace, name))
        if obj is None:
            raise api_error(
                404, "NotFound", f'{self._qualified(res)} "{name}" not found', name=name, group=res[0], kind=res[2]
            )
        return obj

    @staticmethod
    def _qualified(res: ResKey) -> str:
        return f"{res[2]}.{res[0]}" if res[0] else res[2]

    def _wake(self, log: _ResourceLog) -> None:
        wakeup, log.wakeup = log.wakeup, asyncio.Event()
        try:
            asyncio.get_running_loop()
            in_loop = True
        except RuntimeError:
            in_loop = False
        if in_loop or self._loop is None or self._loop.is_closed():
            wakeup.set()
        else:
            self._loop.call_soon_threadsafe(wakeup.set)

    def _emit(self, res: ResKey, event_type: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        log = self._log(res)
        log.events.append(_Event(int(obj["metadata"]["resourceVersion"]), event_type, obj, old))
        if len(log.events) > self.max_events_per_resource:
            drop = len(log.events) // 2
            log.trimmed_rv = log.events[drop - 1].rv
            del log.events[:drop]
            log.base += drop
        self._wake(log)

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

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

    # ------------------------------------------------------------------ kubectl tables

    def _table(self, res: ResKey, items: list[dict[str, Any]], rv: int) -> dict[str, Any]:
        columns = self._columns.get(res) or _BUILTIN_COLUMNS.get(res) or [_AGE]
        definitions = [
            {
                "name": "Name",
                "type": "string",
                "format": "name",
                "description": "Name must be unique within a namespace.",
                "priority": 0,
            },
            *(column.definition() for column in columns),
        ]
        rows = [
            {
                "cells": [obj["metadata"]["name"], *(column.cell(obj) for column in columns)],
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": obj["metadata"],
                },
            }
            for obj in items
        ]
        return {
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": str(rv)},
            "columnDefinitions": definitions,
            "rows": rows,
        }


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
