"""A mounted file, parsed once and again whenever it changes (a rotated Secret, an edited ConfigMap).

Kubernetes updates a mounted Secret or ConfigMap by swapping a symlink, so the check is on what
the path points at: modification time, size and inode, stat'ed (cheaply) on each use. A change
that does not parse keeps the last good value, logged, so a typo in a ConfigMap cannot take a
running server down; at start-up there is no last good value, and the error stops the server.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class WatchedFile(Generic[T]):
    def __init__(self, path: Path, parse: Callable[[str, str], T]) -> None:
        """`parse(text, source)` returns the value or raises ValueError naming what is wrong in `source`."""
        self.path = path
        self.parse = parse
        self._signature: tuple[int, int, int] | None = None
        self._value: T | None = None

    def _stat(self) -> tuple[int, int, int]:
        stat = self.path.stat()
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def load(self) -> T:
        """Read and parse now; any problem raises (start-up: fail fast, naming the file)."""
        signature = self._stat()
        value = self.parse(self.path.read_text(encoding="utf-8"), str(self.path))
        self._signature, self._value = signature, value
        return value

    def current(self) -> T:
        """The value, re-read if the file changed since; the last good one if the new one is bad."""
        if self._value is None:
            return self.load()
        try:
            signature = self._stat()
            if signature == self._signature:
                return self._value
            return self.load()
        except (OSError, ValueError) as exc:
            log.error("%s changed but cannot be used, keeping the previous version: %s", self.path, exc)
            with contextlib.suppress(OSError):
                self._signature = self._stat()  # logged once per change, not once per request
        return self._value
