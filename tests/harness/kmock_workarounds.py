"""Every workaround for kmock 0.8 in one place, each marked ``WORKAROUND (kmock 0.8)``.

kmock 0.8 is the base of the emulated API server (discovery, error rendering, request parsing, the reaction DSL),
and these patch where it falls short of kube-apiserver or is too slow for an operator's request rate. Several reach
into kmock's private attributes (``_requests``, ``_payloads``, ``_get_resources``), which is why pyproject pins
kmock exactly. ``KmockWorkarounds`` is a mixin of ``ApiServer``; the rest of the server keeps to kmock's public API.
See docs/testing.md for the table of what each one fixes.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Callable
from typing import Any

import aiohttp.test_utils
import aiohttp.web
import attrs
import kmock

from . import openapi
from .store import api_error

# Placeholder plural for the /api/v1/namespaces workaround (see KmockWorkarounds.__call__).
_NAMESPACES_PLACEHOLDER = "kubetune-harness-namespaces"
_NAMESPACES_PATH = re.compile(r"^/api/v1/namespaces(?P<rest>/[^/]+(?:/(?:status|finalize))?)?/?$")

# WORKAROUND (kmock 0.8): only ``watch=true`` makes a watch; the kubernetes client sends ``watch=True`` (the real
# server parses it as a Go bool). ApiServer._serve_list serves a list with any of these as a watch.
GO_TRUE = {"1", "t", "T", "true", "True", "TRUE"}


class QuickShutdownServer(aiohttp.test_utils.RawTestServer):
    """WORKAROUND (kmock 0.8): ``kmock.Server`` waits up to 60 s for open watch streams at shutdown.

    aiohttp's test server with a 1 s shutdown timeout instead (watch handlers are long-lived).
    """

    async def _make_runner(self, debug: bool = True, **kwargs: Any) -> aiohttp.web.ServerRunner:
        server = aiohttp.web.Server(self._handler, loop=self._loop, debug=debug, **kwargs)
        return aiohttp.web.ServerRunner(server, debug=debug, shutdown_timeout=1.0, **kwargs)


class KmockWorkarounds:
    """Request plumbing around kmock 0.8 (a mixin of ``ApiServer``)."""

    # Declared and initialised by ApiServer / kmock (attrs classes); listed here for the reader.
    resources: Any
    request_log_limit: int
    _requests: list[kmock.Request]  # kmock's request log (private)
    _payloads: list[Any]  # kmock's reactions, ours (fallbacks) and the tests' (private)
    _loop: asyncio.AbstractEventLoop | None

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        self._loop = asyncio.get_running_loop()
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
        # WORKAROUND (kmock 0.8): parsing.parse_path() treats a leading "namespaces" segment as the
        # namespace prefix of a namespaced resource, so "/api/v1/namespaces" crashes on unpacking and
        # "/api/v1/namespaces/x" parses with no resource. Rewrite these paths to a placeholder plural
        # that parses cleanly; _handle() turns the placeholder back into the "namespaces" resource.
        match = _NAMESPACES_PATH.match(raw_request.path)
        if match:
            path = f"/api/v1/{_NAMESPACES_PLACEHOLDER}{match['rest'] or ''}"
            raw_request = raw_request.clone(rel_url=raw_request.rel_url.with_path(path))
        try:
            return await super().__call__(raw_request)
        finally:
            self._trim_request_log()

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if request.resource is not None and request.resource.plural == _NAMESPACES_PLACEHOLDER:  # see __call__
            fixed = attrs.evolve(request, resource=kmock.resource("", "v1", "namespaces"))
            if self._requests and self._requests[-1] is request:
                self._requests[-1] = fixed
            request = fixed
        if request.url.path.rstrip("/").startswith(openapi.ROOT):
            # WORKAROUND (kmock 0.8): no /openapi; kubectl needs it whether or not a test added reactions.
            return await kmock.Response(payload=self._serve_openapi(request))(request)
        # WORKAROUND (kmock 0.8), fast path. kmock decides whether a reaction sees a request by re-filtering its
        # whole request log (O(requests) per request: seconds per request after a few thousand). When no
        # test-defined reaction exists (only our fallbacks), resource requests go straight to the _serve_* methods.
        handler = self._direct_handler(request)
        if handler is not None and not any(payload.priorities[:1] != (-math.inf,) for payload in self._payloads):
            return await kmock.Response(payload=await handler(request))(request)
        # WORKAROUND (kmock 0.8): skip KubernetesEmulator._handle(): it mirrors every write into kmock.objects
        # (a second, history-keeping store without our semantics). The state lives in self._store and changes in
        # the _serve_* fallbacks, so a reaction that intercepts a request (e.g. ``api["patch", ...] << 500``) also
        # prevents its state change.
        return await super(kmock.KubernetesEmulator, self)._handle(request)

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
        # WORKAROUND (kmock 0.8): kmock keeps every request (for assertions on the log); keep the recent ones.
        limit = self.request_log_limit
        if len(self._requests) > 2 * limit:
            del self._requests[:-limit]
            for payload in self._payloads:
                if len(payload._requests) > 2 * limit:
                    del payload._requests[:-limit]

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
