"""The download cache: folders keyed by URI + ETag/size, shared by processes, pods and attempts.

With `spec.cache` the cache lives on a PersistentVolumeClaim, so a retry (or the next job on the
same model) finds the base model staged instead of downloading ~140 GB again. Several processes
may use one cache at once (the ranks of one pod, the pods of one node, or of every node on a
ReadWriteMany volume), so:

- **One lock file per entry** (`.locks/<key>.lock`, `flock`). A process that uses an entry holds
  a shared lock on it until it exits (the kernel drops the lock if it crashes); filling an entry
  and evicting it take the exclusive lock. A second pod that asks for an entry being filled
  blocks on the lock, then finds it complete and downloads nothing.
- **Atomic publication.** An entry is filled in `.tmp/<key>.<random>/`, its `COMPLETE` marker is
  written there last, and one `rename` moves the whole folder into place. A reader sees a whole
  entry or none; a crash leaves a `.tmp` folder that the next filler of that key (or any
  eviction pass) removes, because nobody holds its lock.
- **Size cap, least recently used first.** The marker's mtime is the entry's last use (touched at
  every use). Before a new entry is written, under the cache-wide lock (`.locks/cache.lock`),
  complete entries are evicted oldest first until the new one fits, counting the room other
  processes reserved for entries they are filling. An entry some process holds (its exclusive lock
  cannot be taken without waiting) is never evicted. An entry larger than the cap on its own is
  still staged, with a warning: the cap is housekeeping, and failing a 70B job because the cache
  cap is smaller than the model would waste the whole job. The claim's capacity is the hard limit.

Caveat: `flock` is honoured between pods of one node and on NFSv4 / CephFS / most RWX volumes
(Linux emulates it with POSIX byte-range locks on NFS). Where those are per process rather than
per open file (NFS), threads of one process would not exclude each other, so a process-wide
registry and per-key thread locks serialise them here. A volume that ignores locks entirely
(some FUSE filesystems) gives no protection between pods: use one cache per node there.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from kubetune_trainer.errors import StorageError

log = logging.getLogger(__name__)

COMPLETE_MARKER = "COMPLETE"
LOCKS = ".locks"
TMP = ".tmp"
CACHE_LOCK = "cache.lock"
RESERVED = ".reserved"
# A fill whose entry vanished again before its shared lock was taken (evicted in the gap of a
# non-atomic flock downgrade) is retried; more than this many times means something is wrong.
FILL_ATTEMPTS = 3

# Lock files this process holds (shared or exclusive), and one thread lock per lock file: POSIX
# locks (what flock becomes on NFS) do not exclude threads of one process from each other.
_registry_guard = threading.Lock()
_held_here: dict[str, int] = {}
_thread_locks: dict[str, threading.Lock] = {}


def _thread_lock(path: Path) -> threading.Lock:
    with _registry_guard:
        return _thread_locks.setdefault(str(path), threading.Lock())


def _mark_held(path: Path, delta: int) -> None:
    with _registry_guard:
        count = _held_here.get(str(path), 0) + delta
        if count > 0:
            _held_here[str(path)] = count
        else:
            _held_here.pop(str(path), None)


def _held_in_this_process(path: Path) -> bool:
    with _registry_guard:
        return str(path) in _held_here


def _try_lock(fh: IO[bytes], mode: int) -> bool:
    try:
        fcntl.flock(fh, mode | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


@dataclass(frozen=True)
class Entry:
    """A complete entry: its folder, its size (files only) and its last use (seconds since the epoch)."""

    key: str
    path: Path
    size_bytes: int
    last_used: float


class DownloadCache:
    """Entries under `root`, each a folder filled once and then only read.

    `size_limit_bytes` caps the sum of complete entries (None: no eviction). `clock` gives the
    last-use times (tests pass a counter so that the LRU order does not depend on mtime resolution).
    """

    def __init__(self, root: Path, size_limit_bytes: int | None = None, clock: Callable[[], float] = time.time) -> None:
        self.root = root
        self.size_limit_bytes = size_limit_bytes
        self.clock = clock
        self._held: dict[str, IO[bytes]] = {}  # key -> lock file holding our shared lock
        self._guard = threading.Lock()

    # -- paths -----------------------------------------------------------------------------------
    def entry_path(self, key: str) -> Path:
        return self.root / key

    def _lock_path(self, key: str) -> Path:
        return self.root / LOCKS / f"{key}.lock"

    def _open(self, path: Path) -> IO[bytes]:
        # Lock files are never deleted: unlinking one while another process has it open would let
        # two processes hold "the" exclusive lock on two different inodes.
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.open("a+b")

    def is_complete(self, key: str) -> bool:
        return (self.entry_path(key) / COMPLETE_MARKER).is_file()

    # -- using an entry ----------------------------------------------------------------------------
    def get(self, key: str, size_bytes: int, fill: Callable[[Path], None], record: dict[str, Any]) -> Path:
        """The folder of the complete entry `key`, filled by `fill(folder)` if missing.

        The entry stays locked (shared) until `close()` or the end of the process, so no other
        process evicts what this one is training on. `size_bytes` is what the fill will write
        (room is made for it first); `record` goes into the COMPLETE marker.
        """
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"invalid cache key {key!r}")
        what = str(record.get("uri", key))
        lock_path = self._lock_path(key)
        with _thread_lock(lock_path):
            with self._guard:
                if key in self._held and self.is_complete(key):
                    self._touch(key)
                    return self.entry_path(key)
            for _ in range(FILL_ATTEMPTS):
                fh = self._open(lock_path)
                _mark_held(lock_path, 1)
                try:
                    if not _try_lock(fh, fcntl.LOCK_SH):
                        log.info("waiting for another process to finish staging %s", what)
                        fcntl.flock(fh, fcntl.LOCK_SH)
                    if not self.is_complete(key):
                        fcntl.flock(fh, fcntl.LOCK_UN)
                        fcntl.flock(fh, fcntl.LOCK_EX)
                        if self.is_complete(key):
                            log.info("cache hit for %s (staged by another process meanwhile)", what)
                        else:
                            self._fill(key, size_bytes, fill, record, what)
                        # Not atomic in flock: an evictor may slip in between, so look again below.
                        fcntl.flock(fh, fcntl.LOCK_SH)
                    else:
                        log.info("cache hit for %s", what)
                    if self.is_complete(key):
                        self._touch(key)
                        with self._guard:
                            previous = self._held.pop(key, None)
                            self._held[key] = fh
                        if previous is not None:
                            self._release(lock_path, previous)
                        return self.entry_path(key)
                except BaseException:
                    self._release(lock_path, fh)
                    raise
                self._release(lock_path, fh)
        raise StorageError(f"{what}: the cache entry {self.entry_path(key)} was evicted as soon as it was written")

    def close(self) -> None:
        """Release every entry this object holds (they become evictable)."""
        with self._guard:
            held, self._held = self._held, {}
        for key, fh in held.items():
            self._release(self._lock_path(key), fh)

    def _release(self, lock_path: Path, fh: IO[bytes]) -> None:
        fh.close()  # closing drops the flock
        _mark_held(lock_path, -1)

    def _touch(self, key: str) -> None:
        now = self.clock()
        with suppress(OSError):  # a read-only cache still serves; it only forgets the use
            os.utime(self.entry_path(key) / COMPLETE_MARKER, (now, now))

    # -- filling (under the entry's exclusive lock) --------------------------------------------------
    def _fill(self, key: str, size_bytes: int, fill: Callable[[Path], None], record: dict[str, Any], what: str) -> None:
        self._remove_leftovers(key)
        tmp = self._reserve(key, size_bytes, what)
        try:
            fill(tmp)
            written = folder_bytes(tmp) - (tmp / RESERVED).stat().st_size
            (tmp / RESERVED).unlink()
            (tmp / COMPLETE_MARKER).write_text(json.dumps({**record, "bytes": written}))
            self._publish(tmp, key, what)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._touch(key)
        log.info("staged %s into the cache (%d bytes)", what, written)

    def _publish(self, tmp: Path, key: str, what: str) -> None:
        """Rename the filled folder into place: the commit point, a whole entry appears at once."""
        try:
            tmp.rename(self.entry_path(key))
        except OSError as exc:
            # Only on a volume that ignores locks: another stager published the same entry first.
            if not self.is_complete(key):
                raise StorageError(f"{what}: cannot publish the cache entry {self.entry_path(key)}: {exc}") from exc
            log.warning("%s was staged by another process at the same time (does the volume honour locks?)", what)
            shutil.rmtree(tmp, ignore_errors=True)

    def _remove_leftovers(self, key: str) -> None:
        """What a crashed filler of `key` left: `.tmp/<key>.*` folders, or an entry folder without marker."""
        tmp_root = self.root / TMP
        if tmp_root.is_dir():
            for leftover in tmp_root.glob(f"{key}.*"):
                log.warning("removing a half-written cache entry %s (a stager died)", leftover)
                shutil.rmtree(leftover, ignore_errors=True)
        entry = self.entry_path(key)
        if entry.exists() and not self.is_complete(key):
            log.warning("removing the incomplete cache entry %s", entry)
            shutil.rmtree(entry, ignore_errors=True)

    def _reserve(self, key: str, size_bytes: int, what: str) -> Path:
        """Make room for `size_bytes` (evicting), then create the fill folder that holds the room."""
        tmp = self.root / TMP / f"{key}.{uuid.uuid4().hex[:12]}"
        with self._cache_lock():
            if self.size_limit_bytes is not None:
                self._make_room(key, size_bytes, what)
            tmp.mkdir(parents=True)
            (tmp / RESERVED).write_text(str(size_bytes))
        return tmp

    @contextmanager
    def _cache_lock(self) -> Iterator[None]:
        path = self.root / LOCKS / CACHE_LOCK
        with _thread_lock(path), self._open(path) as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    def _make_room(self, key: str, size_bytes: int, what: str) -> None:
        limit = self.size_limit_bytes
        assert limit is not None
        entries = [e for e in self.entries() if e.key != key]
        used = sum(e.size_bytes for e in entries) + self._reserved_by_others(key)
        for entry in sorted(entries, key=lambda e: e.last_used):
            if used + size_bytes <= limit:
                break
            if self._try_evict(entry):
                used -= entry.size_bytes
        if used + size_bytes > limit:
            log.warning(
                "%s needs %d bytes; with %d bytes held by entries in use, that exceeds the cache cap "
                "(cache.sizeLimit, %d bytes): staging it anyway, above the cap",
                what,
                size_bytes,
                used,
                limit,
            )

    def _try_evict(self, entry: Entry) -> bool:
        lock_path = self._lock_path(entry.key)
        if _held_in_this_process(lock_path):
            return False
        with self._open(lock_path) as fh:
            if not _try_lock(fh, fcntl.LOCK_EX):
                return False  # a process is using it (shared) or filling it (exclusive)
            if not self.is_complete(entry.key):
                return False
            grave = self.root / TMP / f"{entry.key}.evicted-{uuid.uuid4().hex[:12]}"
            grave.parent.mkdir(parents=True, exist_ok=True)
            entry.path.rename(grave)  # gone at once for readers; the deletion may take a while
            shutil.rmtree(grave, ignore_errors=True)
        log.info("evicted cache entry %s (%d bytes, least recently used)", entry.key, entry.size_bytes)
        return True

    def _reserved_by_others(self, key: str) -> int:
        """Room held by fills in progress elsewhere; folders of dead fills are removed on the way."""
        tmp_root = self.root / TMP
        if not tmp_root.is_dir():
            return 0
        total = 0
        for folder in sorted(tmp_root.iterdir()):
            owner = folder.name.split(".", 1)[0]
            if owner == key:
                continue
            lock_path = self._lock_path(owner)
            if not _held_in_this_process(lock_path):
                with self._open(lock_path) as fh:
                    if _try_lock(fh, fcntl.LOCK_EX):  # nobody is filling it: a crash left it
                        shutil.rmtree(folder, ignore_errors=True)
                        continue
            with suppress(OSError, ValueError):
                total += int((folder / RESERVED).read_text())
        return total

    # -- inspection --------------------------------------------------------------------------------
    def entries(self) -> list[Entry]:
        """Complete entries, in no particular order."""
        if not self.root.is_dir():
            return []
        found: list[Entry] = []
        for path in self.root.iterdir():
            marker = path / COMPLETE_MARKER
            if path.name.startswith(".") or not marker.is_file():
                continue
            try:
                size = int(json.loads(marker.read_text())["bytes"])
                last_used = marker.stat().st_mtime
            except (OSError, ValueError, KeyError, TypeError):
                continue  # evicted while we looked, or not ours
            found.append(Entry(path.name, path, size, last_used))
        return found
