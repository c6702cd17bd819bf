"""Watch streams: every change of a resource is kept as an event, and each watcher reads the shared history.

Each resource has one ``ResourceLog`` (the last ``max_events_per_resource`` events, each serialised once per event
type). A watch starts from the current state (no ``resourceVersion``: ADDED events) or resumes after a
``resourceVersion`` (410 ``Expired`` once that is older than the kept history), honours ``timeoutSeconds``, and sees
objects that enter or leave its label/field selection as ADDED/DELETED, as with the real server.
``close_watches()`` ends every stream (kmock's HTTP server would otherwise wait for them at shutdown).
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import json
import threading
from collections.abc import AsyncIterator, Mapping
from typing import Any

import kmock

from .selectors import FieldRequirement, Requirement, fields_match, labels_match
from .store import ResKey, api_error


@dataclasses.dataclass
class Event:
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


class ResourceLog:
    """The recent watch events of one resource, shared by all its watchers."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.base = 0  # how many events were trimmed from the front (absolute position of events[0])
        self.trimmed_rv = 0  # watches from a resourceVersion older than this get 410 Gone
        self.wakeup = asyncio.Event()


@dataclasses.dataclass(frozen=True)
class WatchFilter:
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


class WatchStreams:
    """Emit change events and serve them as watch streams (a mixin of ``ApiServer``)."""

    # Declared and initialised by ApiServer (an attrs class); listed here for the reader.
    max_events_per_resource: int
    _logs: dict[ResKey, ResourceLog]
    _state_lock: threading.RLock
    _loop: asyncio.AbstractEventLoop | None
    _closing: bool

    def close_watches(self) -> None:
        """End every watch stream now and refuse new ones (called before the HTTP server shuts down)."""
        self._closing = True
        with self._state_lock:
            for log in self._logs.values():
                self._wake(log)

    async def _serve_watch(self, request: kmock.Request) -> kmock.Payload:
        res, _ = self._resource(request)
        labels, fields = self._selectors(request)
        watch = WatchFilter(request.namespace, request.name, labels, fields)
        timeout = float(request.params["timeoutSeconds"]) if request.params.get("timeoutSeconds") else None
        since = request.params.get("resourceVersion") or ""
        if since and not since.isdigit():
            raise api_error(400, "BadRequest", f"invalid resourceVersion {since!r}")
        stream = self._watch_stream(res, watch, int(since or 0), timeout)
        return kmock.Response(headers={"Content-Type": "application/json"}, payload=stream)

    async def _watch_stream(
        self, res: ResKey, watch: WatchFilter, since: int, timeout: float | None
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
                    batch: list[Event] = []
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
    def _translate(event: Event, watch: WatchFilter) -> bytes | None:
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

    def _emit(self, res: ResKey, event_type: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        log = self._log(res)
        log.events.append(Event(int(obj["metadata"]["resourceVersion"]), event_type, obj, old))
        if len(log.events) > self.max_events_per_resource:
            drop = len(log.events) // 2
            log.trimmed_rv = log.events[drop - 1].rv
            del log.events[:drop]
            log.base += drop
        self._wake(log)

    def _log(self, res: ResKey) -> ResourceLog:
        if res not in self._logs:
            self._logs[res] = ResourceLog()
        return self._logs[res]

    def _wake(self, log: ResourceLog) -> None:
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
