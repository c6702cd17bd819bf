"""A counting (and, when asked, faulty) HTTP proxy in front of an S3 server.

It says how many times an object was downloaded, and with ``faults=FaultPlan(...)`` it injects what
a real S3 endpoint does now and then: 5xx replies, connection resets and slow replies, at a seeded
rate; ``outage = True`` resets every connection, a hard outage.

Clients are pointed at the proxy's endpoint URL (``storage.endpoint`` of a FineTuneJob, or boto3's
``endpoint_url``), exactly as they would be at MinIO; nothing in boto3 is patched. Each request is
forwarded unchanged (Host header included, so a signature still matches) and recorded as
``(method, path)`` with the query string apart, and the Range header (a ranged GET reads part of an
object, e.g. a file header), in arrival order. Bodies are buffered: this is for
the small objects of tests.
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer", "upgrade"}


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # unquoted, without the query string: /bucket/key for path-style addressing
    query: str
    range: str = ""  # the Range header of a partial read; "" for a whole object


# What S3 answers when it sheds load: boto3's standard retry mode retries 500, 502, 503 and 504.
_FAULT_REPLIES = (
    (503, "SlowDown", "Please reduce your request rate."),
    (500, "InternalError", "We encountered an internal error. Please try again."),
)


@dataclass
class FaultPlan:
    """Inject a fault into ``rate`` of the requests, drawn from ``seed``; each fault is one of ``kinds``."""

    rate: float = 0.1
    seed: int = 0
    kinds: tuple[str, ...] = ("5xx", "reset", "slow")
    slow_seconds: float = 1.0  # below the trainer's read timeout: a slow reply, not a lost one

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def draw(self) -> str | None:
        if self._rng.random() >= self.rate:
            return None
        return self._rng.choice(self.kinds)


class CountingS3Proxy:
    """``with CountingS3Proxy(upstream) as proxy:`` serves ``proxy.endpoint`` and records ``proxy.requests``."""

    def __init__(self, upstream: str, faults: FaultPlan | None = None) -> None:
        parts = urlsplit(upstream)
        assert parts.hostname and parts.port, upstream
        self.upstream = (parts.hostname, parts.port)
        self.faults = faults
        self.outage = False  # True: every request's connection is reset, as when S3 is unreachable
        self._injected: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._requests: list[Request] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-proxy", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._requests)

    def count(self, method: str, path_prefix: str = "/", since: int = 0) -> int:
        """Requests with this method whose path starts with `path_prefix`, from index `since` on."""
        return sum(1 for r in self.requests[since:] if r.method == method and r.path.startswith(path_prefix))

    def mark(self) -> int:
        """An index into the record: pass it as `since` to count only what came after."""
        with self._lock:
            return len(self._requests)

    def start(self) -> CountingS3Proxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> CountingS3Proxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def injected(self) -> dict[str, int]:
        """Faults injected so far, by kind ("outage" for requests refused during an outage)."""
        with self._lock:
            return dict(self._injected)

    def _fault(self) -> tuple[str, int] | None:
        """The fault for this request, if any, and how many of its kind came before it."""
        with self._lock:
            kind = "outage" if self.outage else (self.faults.draw() if self.faults else None)
            if kind is None:
                return None
            self._injected[kind] += 1
            return kind, self._injected[kind]

    def _record(self, method: str, target: str, range_header: str) -> None:
        parts = urlsplit(target)
        with self._lock:
            self._requests.append(Request(method, unquote(parts.path), parts.query, range_header))

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as boto3's connection pool expects

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    return b"".join(self._chunks())
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _chunks(self) -> Iterator[bytes]:
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline().strip():  # trailers
                            pass
                        return
                    yield self.rfile.read(size)
                    self.rfile.readline()

            def _reset(self) -> None:
                """Close with a TCP RST (SO_LINGER 0) and no reply, as a dropped connection."""
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True

            def _error_reply(self, nth: int) -> None:
                status, code, message = _FAULT_REPLIES[nth % len(_FAULT_REPLIES)]
                data = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _forward(self) -> None:
                body = self._body()
                proxy._record(self.command, self.path, self.headers.get("Range", ""))
                kind, nth = proxy._fault() or ("", 0)
                if kind in {"reset", "outage"}:
                    self._reset()
                    return
                if kind == "5xx":
                    self._error_reply(nth)
                    return
                if kind == "slow" and proxy.faults is not None:
                    time.sleep(proxy.faults.slow_seconds)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                if body or self.command in {"PUT", "POST"}:
                    headers["Content-Length"] = str(len(body))
                with _connection(*proxy.upstream) as upstream:
                    upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                    for key, value in headers.items():
                        upstream.putheader(key, value)
                    upstream.endheaders(body or None)
                    response = upstream.getresponse()
                    payload = response.read()
                    self.send_response(response.status, response.reason)
                    for key, value in response.getheaders():
                        if key.lower() in HOP_BY_HOP or (key.lower() == "content-length" and self.command != "HEAD"):
                            continue
                        self.send_header(key, value)
                    if self.command != "HEAD":  # a HEAD's Content-Length is the object's size: keep upstream's
                        self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)

            # http.server dispatches on these names.
            def do_GET(self) -> None:
                self._forward()

            def do_HEAD(self) -> None:
                self._forward()

            def do_PUT(self) -> None:
                self._forward()

            def do_POST(self) -> None:
                self._forward()

            def do_DELETE(self) -> None:
                self._forward()

        return Handler


@contextmanager
def _connection(host: str, port: int) -> Iterator[http.client.HTTPConnection]:
    conn = http.client.HTTPConnection(host, port, timeout=120)
    try:
        yield conn
    finally:
        conn.close()
