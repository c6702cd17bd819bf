"""The download cache shared by pods and attempts (issue 10, item 7): locks, atomic entries, LRU cap.

Other processes are real processes (subprocess running a small script), because flock
semantics between processes are what the pods of one node, or of an RWX volume, rely on.
"""

from __future__ import annotations

import itertools
import json
import logging
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from kubetune_api.spec import CacheSpec, quantity_bytes
from kubetune_api.trainer_config import RuntimeOptions
from kubetune_trainer.cache import COMPLETE_MARKER, FILL_ATTEMPTS, TMP, DownloadCache
from kubetune_trainer.errors import StorageError

PAYLOAD = b"x" * 100_000


def counter_clock() -> Callable[[], float]:
    """Last-use times 1, 2, 3, ...: the LRU order does not hang on the filesystem's mtime resolution."""
    ticks = itertools.count(1_700_000_000)
    return lambda: float(next(ticks))


def writer(payload: bytes, calls: list[str] | None = None, name: str = "blob") -> Callable[[Path], None]:
    def fill(folder: Path) -> None:
        if calls is not None:
            calls.append(name)
        (folder / "data").mkdir()
        with (folder / "data" / name).open("wb") as fh:
            for start in range(0, len(payload), 4096):  # in pieces, so a reader could catch it half-written
                fh.write(payload[start : start + 4096])

    return fill


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[DownloadCache]:
    made = DownloadCache(tmp_path / "cache", clock=counter_clock())
    yield made
    made.close()


def run_script(code: str, *args: str) -> subprocess.Popen[str]:
    """A separate process using the cache: flock between processes, as between pods."""
    script = textwrap.dedent(code)
    return subprocess.Popen(
        [sys.executable, "-c", script, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


# -- concurrency: download once, never a partial entry -------------------------------------------------


def test_threads_staging_one_entry_download_it_once_and_all_see_it_whole(tmp_path: Path) -> None:
    calls: list[str] = []
    started = threading.Barrier(8)

    def stage(_: int) -> bytes:
        own = DownloadCache(tmp_path / "cache")  # one cache object each, like separate ranks
        started.wait(timeout=60)
        path = own.get("k1", len(PAYLOAD), writer(PAYLOAD, calls), {"uri": "s3://b/k1"})
        data = (path / "data" / "blob").read_bytes()
        own.close()
        return data

    with ThreadPoolExecutor(max_workers=8) as pool:
        seen = list(pool.map(stage, range(8)))
    assert calls == ["blob"]
    assert all(data == PAYLOAD for data in seen)


def test_threads_sharing_one_cache_object_also_download_once(cache: DownloadCache) -> None:
    calls: list[str] = []
    with ThreadPoolExecutor(max_workers=6) as pool:
        paths = list(pool.map(lambda _: cache.get("k1", len(PAYLOAD), writer(PAYLOAD, calls), {}), range(6)))
    assert calls == ["blob"] and len(set(paths)) == 1
    assert (paths[0] / "data" / "blob").read_bytes() == PAYLOAD


STAGER = """
import sys, time
from pathlib import Path
from kubetune_trainer.cache import DownloadCache

root, index, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
(root.parent / f"started-{index}").touch()

def fill(folder):
    # Wait (bounded) until every stager has started, so the others really queue on the lock.
    deadline = time.monotonic() + 60
    while len(list(root.parent.glob("started-*"))) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    with open(root.parent / "fills.log", "a") as log:
        log.write(index + "\\n")
    (folder / "data").mkdir()
    with open(folder / "data" / "blob", "wb") as fh:
        for _ in range(50):
            fh.write(b"y" * 20_000)
            fh.flush()

path = DownloadCache(root).get("shared", 1_000_000, fill, {"uri": "s3://b/shared"})
data = (path / "data" / "blob").read_bytes()
print("OK" if data == b"y" * 1_000_000 else f"PARTIAL {len(data)}")
"""


def test_processes_staging_one_entry_download_it_once_and_never_see_it_partial(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    procs = [run_script(STAGER, str(root), str(i), "4") for i in range(4)]
    outputs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0]
    assert outputs == ["OK"] * 4
    assert len((tmp_path / "fills.log").read_text().split()) == 1  # one download for four pods
    assert not list((root / TMP).iterdir())  # nothing half-written left behind


# -- crashes and failures --------------------------------------------------------------------------------

CRASHER = """
import os, sys
from pathlib import Path
from kubetune_trainer.cache import DownloadCache

def fill(folder):
    (folder / "data").mkdir()
    (folder / "data" / "blob").write_bytes(b"half")
    os._exit(9)  # as if SIGKILLed in the middle of the download: no cleanup runs

DownloadCache(Path(sys.argv[1])).get("k1", 100_000, fill, {})
"""


def test_a_stager_killed_mid_download_leaves_a_tmp_folder_that_is_cleaned_and_redone(
    cache: DownloadCache, tmp_path: Path
) -> None:
    crashed = run_script(CRASHER, str(cache.root))
    crashed.communicate(timeout=60)
    assert crashed.returncode == 9
    leftovers = list((cache.root / TMP).iterdir())
    assert [p.name.split(".")[0] for p in leftovers] == ["k1"] and not cache.is_complete("k1")

    calls: list[str] = []
    path = cache.get("k1", len(PAYLOAD), writer(PAYLOAD, calls), {})  # the dead process's lock is gone
    assert calls == ["blob"] and (path / "data" / "blob").read_bytes() == PAYLOAD
    assert not list((cache.root / TMP).iterdir())


def test_an_entry_folder_without_its_marker_is_redone(cache: DownloadCache) -> None:
    broken = cache.entry_path("k1") / "data"
    broken.mkdir(parents=True)
    (broken / "blob").write_bytes(b"stale")
    calls: list[str] = []
    path = cache.get("k1", len(PAYLOAD), writer(PAYLOAD, calls), {})
    assert calls == ["blob"] and (path / "data" / "blob").read_bytes() == PAYLOAD


def test_a_failed_download_leaves_nothing_and_the_next_stager_retries(cache: DownloadCache) -> None:
    def failing(folder: Path) -> None:
        (folder / "part").write_bytes(b"half")
        raise StorageError("s3://b/k1: connection reset")

    with pytest.raises(StorageError, match="connection reset"):
        cache.get("k1", 100, failing, {})
    assert not cache.is_complete("k1") and not list((cache.root / TMP).iterdir())
    calls: list[str] = []
    cache.get("k1", len(PAYLOAD), writer(PAYLOAD, calls), {})
    assert calls == ["blob"]


def test_an_entry_that_keeps_vanishing_is_an_error_naming_the_uri(
    cache: DownloadCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    fills: list[str] = []
    real = cache.is_complete
    # After each fill, the entry is gone again before the stager holds it (an evictor won every race).
    monkeypatch.setattr(cache, "is_complete", lambda key: real(key) and not fills)
    with pytest.raises(StorageError, match=r"s3://b/k1: the cache entry .* was evicted"):
        cache.get("k1", 10, writer(b"z" * 10, fills), {"uri": "s3://b/k1"})
    assert len(fills) == FILL_ATTEMPTS


def test_an_entry_published_meanwhile_by_a_stager_that_ignored_the_lock_is_used(
    cache: DownloadCache, caplog: pytest.LogCaptureFixture
) -> None:
    # On a volume that ignores locks, another pod may publish the same entry while we download.
    def racing(folder: Path) -> None:
        rival = cache.entry_path("k1")
        (rival / "data").mkdir(parents=True)
        (rival / "data" / "blob").write_bytes(PAYLOAD)
        (rival / COMPLETE_MARKER).write_text(json.dumps({"bytes": len(PAYLOAD)}))
        writer(PAYLOAD)(folder)

    with caplog.at_level(logging.WARNING, logger="kubetune_trainer.cache"):
        path = cache.get("k1", len(PAYLOAD), racing, {"uri": "s3://b/k1"})
    assert (path / "data" / "blob").read_bytes() == PAYLOAD and not list((cache.root / TMP).iterdir())
    assert "does the volume honour locks?" in caplog.text


def test_an_entry_that_cannot_be_published_is_a_storage_error(cache: DownloadCache) -> None:
    def blocked(folder: Path) -> None:
        (cache.entry_path("k1") / "squatter").mkdir(parents=True)  # a non-empty folder, not an entry
        writer(PAYLOAD)(folder)

    with pytest.raises(StorageError, match=r"s3://b/k1: cannot publish the cache entry"):
        cache.get("k1", len(PAYLOAD), blocked, {"uri": "s3://b/k1"})
    assert not list((cache.root / TMP).iterdir())


@pytest.mark.parametrize("key", ["", "../escape", ".locks", "a/b"])
def test_keys_that_are_not_plain_names_are_refused(cache: DownloadCache, key: str) -> None:
    with pytest.raises(ValueError, match="invalid cache key"):
        cache.get(key, 1, writer(b"z"), {})


# -- the size cap and LRU eviction -------------------------------------------------------------------------


def stage(cache: DownloadCache, key: str, size: int = 100) -> Path:
    path = cache.get(key, size, writer(b"z" * size, name=key), {"uri": f"s3://b/{key}"})
    cache.close()  # a finished job: its entries are no longer in use
    return path


def test_least_recently_used_entries_are_evicted_first_to_stay_under_the_cap(tmp_path: Path) -> None:
    cache = DownloadCache(tmp_path / "cache", size_limit_bytes=300, clock=counter_clock())
    for key in ("a", "b", "c"):
        stage(cache, key)
    stage(cache, "a")  # a hit: "a" is now the most recently used, "b" the least
    stage(cache, "d")
    assert sorted(e.key for e in cache.entries()) == ["a", "c", "d"]
    stage(cache, "e", size=200)  # needs two entries' room: the two least recently used go
    assert sorted(e.key for e in cache.entries()) == ["d", "e"]
    assert sum(e.size_bytes for e in cache.entries()) <= 300
    assert not list((cache.root / TMP).iterdir())  # evicted folders are deleted, not just moved


def test_no_cap_means_no_eviction(cache: DownloadCache) -> None:
    for key in ("a", "b", "c", "d"):
        stage(cache, key, size=10_000)
    assert len(cache.entries()) == 4


def test_an_entry_in_use_in_this_process_is_not_evicted(tmp_path: Path) -> None:
    cache = DownloadCache(tmp_path / "cache", size_limit_bytes=200, clock=counter_clock())
    user = DownloadCache(cache.root, size_limit_bytes=200, clock=counter_clock())
    training_on = user.get("model", 100, writer(b"m" * 100, name="model"), {})  # held until user.close()
    stage(cache, "old")
    stage(cache, "new")  # "model" is the least recently used, but in use: "old" goes instead
    assert sorted(e.key for e in cache.entries()) == ["model", "new"]
    assert (training_on / "data" / "model").read_bytes() == b"m" * 100
    user.close()
    stage(cache, "newest")  # released: now it can go
    assert sorted(e.key for e in cache.entries()) == ["new", "newest"]


HOLDER = """
import sys
from pathlib import Path
from kubetune_trainer.cache import DownloadCache

def fill(folder):
    (folder / "data").mkdir()
    (folder / "data" / "held").write_bytes(b"h" * 100)

cache = DownloadCache(Path(sys.argv[1]))
cache.get("held", 100, fill, {})
print("holding", flush=True)
sys.stdin.read()  # keep the shared lock until the test closes our stdin
"""


def test_an_entry_another_process_holds_is_never_evicted_even_over_the_cap(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "cache"
    holder = run_script(HOLDER, str(root))
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        cache = DownloadCache(root, size_limit_bytes=150, clock=counter_clock())
        with caplog.at_level(logging.WARNING, logger="kubetune_trainer.cache"):
            stage(cache, "new")
        # The held entry is the only candidate and is in use: the cap is exceeded, with a warning.
        assert sorted(e.key for e in cache.entries()) == ["held", "new"]
        assert "exceeds the cache cap (cache.sizeLimit, 150 bytes)" in caplog.text
    finally:
        holder.communicate(input="", timeout=60)
    stage(cache, "newer")  # the holder exited: now "held" (the least recently used) can go
    assert [e.key for e in cache.entries()] == ["newer"]


def test_a_model_larger_than_the_cap_is_still_staged_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = DownloadCache(tmp_path / "cache", size_limit_bytes=100, clock=counter_clock())
    stage(cache, "small", size=50)
    with caplog.at_level(logging.WARNING, logger="kubetune_trainer.cache"):
        path = stage(cache, "huge", size=500)
    assert (path / "data" / "huge").stat().st_size == 500
    assert [e.key for e in cache.entries()] == ["huge"]  # everything evictable went first
    assert "s3://b/huge needs 500 bytes" in caplog.text and "staging it anyway" in caplog.text


def test_room_reserved_by_a_fill_in_progress_counts_against_the_cap(tmp_path: Path) -> None:
    cache = DownloadCache(tmp_path / "cache", size_limit_bytes=300, clock=counter_clock())
    stage(cache, "a")
    stage(cache, "b")
    inside = threading.Event()
    finish = threading.Event()

    def slow_fill(folder: Path) -> None:
        inside.set()
        assert finish.wait(60)
        writer(b"s" * 200, name="slow")(folder)

    other = DownloadCache(cache.root, size_limit_bytes=300, clock=counter_clock())
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(other.get, "slow", 200, slow_fill, {})
        assert inside.wait(60)
        # 200 bytes are promised to "slow": adding "c" (100) must evict both a and b (300 - 200 = 100 left).
        stage(cache, "c")
        finish.set()
        pending.result()
    other.close()
    assert sorted(e.key for e in cache.entries()) == ["c", "slow"]


# -- the spec field and the trainer config ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("500Gi", 500 * 1024**3), ("1.5Ti", int(1.5 * 1024**4)), ("200G", 200 * 10**9), ("1e12", 10**12), ("64", 64)],
)
def test_size_limits_are_kubernetes_quantities(text: str, expected: int) -> None:
    assert quantity_bytes(text) == expected
    assert CacheSpec.model_validate({"claimName": "models", "sizeLimit": text}).size_limit_bytes == expected


@pytest.mark.parametrize("text", ["500GB", "lots", "-1Gi", "0", "1m"])
def test_a_bad_size_limit_is_refused_naming_the_field(text: str) -> None:
    from kubetune_api.spec import FineTuneJobSpec
    from kubetune_api.validation_messages import describe

    spec: dict[str, Any] = {
        "baseModel": {"uri": "s3://models/llama/"},
        "dataset": {"train": "s3://data/train.jsonl"},
        "output": {"uri": "s3://out/run/"},
        "cache": {"claimName": "model-cache", "sizeLimit": text},
    }
    with pytest.raises(ValidationError) as refused:
        FineTuneJobSpec.model_validate(spec)
    message = describe(refused.value, FineTuneJobSpec, root="spec")
    assert message.startswith("spec.cache.sizeLimit: "), message
    assert repr(text) in message


def test_a_cache_needs_a_claim_name() -> None:
    with pytest.raises(ValidationError, match="claimName"):
        CacheSpec.model_validate({"sizeLimit": "1Gi"})


def test_the_cap_reaches_the_trainer_as_bytes_in_its_config() -> None:
    runtime = RuntimeOptions(cache_dir="/cache", cache_size_limit_bytes=quantity_bytes("2Gi"))
    assert json.loads(runtime.model_dump_json())["cache_size_limit_bytes"] == 2 * 1024**3
    with pytest.raises(ValidationError, match="cache_size_limit_bytes"):
        RuntimeOptions(cache_size_limit_bytes=0)


def test_a_marker_records_what_the_entry_holds(cache: DownloadCache) -> None:
    path = cache.get("k1", len(PAYLOAD), writer(PAYLOAD), {"uri": "s3://b/k1", "etag": "abc"})
    record = json.loads((path / COMPLETE_MARKER).read_text())
    assert record == {"uri": "s3://b/k1", "etag": "abc", "bytes": len(PAYLOAD)}
