"""Local-path storage under concurrency: several ranks share one output folder."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kubetune_trainer.storage import Storage


def test_ranks_checking_one_output_folder_at_once_do_not_trip_each_other(tmp_path: Path) -> None:
    # Rank 0 once removed the shared probe folder while rank 1 was about to write into it
    # (a StorageError on rank 1 in a DDP run). Many concurrent checks must all pass.
    out = tmp_path / "out"
    storage = Storage(cache_dir=tmp_path / "cache")
    with ThreadPoolExecutor(max_workers=8) as pool:
        for future in [pool.submit(storage.check_writable, f"{out}/") for _ in range(200)]:
            future.result()
    assert not [p for p in out.rglob("*") if p.is_file()], "probes are removed"
