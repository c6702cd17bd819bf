"""Per-rank RNG state in checkpoints (issue 11, item 3).

Each rank saves its own stream (rng/rank-NNNNN.pt) and gets it back on resume, so ranks never share
one random stream after a resume. A rank the checkpoint never had (resumed on more processes) gets a
new stream derived from (seed, step, rank); rank 0 of a checkpoint written before per-rank states
gets the single state it holds (rng.pt).
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from kubetune_trainer.checkpoint import RNG_DIR, CheckpointStore, rng_file, rng_state, step_name
from kubetune_trainer.storage import Storage

STEP = 4


def store(tmp_path: Path) -> CheckpointStore:
    return CheckpointStore(Storage(cache_dir=tmp_path / "cache"), str(tmp_path / "out"), keep=2)


def draws() -> tuple[list[float], list[float]]:
    """What a rank draws next from torch's and Python's streams."""
    return torch.rand(4).tolist(), [random.random() for _ in range(4)]


def save_ranks(checkpoints: CheckpointStore, ranks: int) -> list[tuple[list[float], list[float]]]:
    """Each rank seeds its own stream, saves it, and then draws: what a resumed rank must draw."""
    expected = []
    for rank in range(ranks):
        torch.manual_seed(100 + rank)
        random.seed(100 + rank)
        checkpoints.save_rng(STEP, rank)
        expected.append(draws())
    return expected


def test_every_rank_resumes_its_own_stream(tmp_path: Path) -> None:
    checkpoints = store(tmp_path)
    expected = save_ranks(checkpoints, ranks=2)
    names = sorted(p.name for p in (tmp_path / "out" / "checkpoints" / step_name(STEP) / RNG_DIR).iterdir())
    assert names == [rng_file(0), rng_file(1)]
    for rank in (1, 0):
        torch.manual_seed(0)  # whatever the process drew before the resume
        assert checkpoints.restore_rng(STEP, rank, seed=42) == "own"
        assert draws() == expected[rank]
    assert expected[0] != expected[1], "two ranks, two streams"


def test_a_rank_the_checkpoint_never_had_gets_a_new_stream_of_its_own(tmp_path: Path) -> None:
    checkpoints = store(tmp_path)
    saved = save_ranks(checkpoints, ranks=2)
    got = {}
    for rank in (2, 3):
        assert checkpoints.restore_rng(STEP, rank, seed=42) == "new"
        got[rank] = draws()
    assert got[2] != got[3] and all(stream not in saved for stream in got.values())
    checkpoints.restore_rng(STEP, 2, seed=42)
    assert draws() == got[2], "reproducible from (seed, step, rank)"


def test_rank_0_of_a_checkpoint_from_before_per_rank_states_gets_the_one_it_has(tmp_path: Path) -> None:
    checkpoints = store(tmp_path)
    folder = tmp_path / "out" / "checkpoints" / step_name(STEP)
    folder.mkdir(parents=True)
    torch.manual_seed(7)
    random.seed(7)
    torch.save(rng_state(), folder / "rng.pt")
    expected = draws()
    assert checkpoints.restore_rng(STEP, 0, seed=42) == "legacy"
    assert draws() == expected
    assert checkpoints.restore_rng(STEP, 1, seed=42) == "new", "rank 0's state is not shared with rank 1"
    assert draws() != expected
