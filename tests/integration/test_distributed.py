"""Data-parallel training without a GPU: two ranks under torchrun (gloo on CPU).

The multi-GPU code path (rank sharding of micro-batches, loss normalised over all ranks,
DDP gradient averaging undone, only rank 0 writing) is the same on CPU. Two ranks with
batchSize 4 must follow the same loss curve as one process with batchSize 8.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import ROOT, trainer_config
from kubetune_trainer.checkpoint import RNG_DIR, rng_file, step_name

pytestmark = pytest.mark.slow


def run(
    tmp_path: Path,
    model: Path,
    data: Path,
    name: str,
    batch_size: int,
    ranks: int,
    training: dict[str, Any] | None = None,
    dropout: float = 0.0,
) -> list[dict[str, float]]:
    config = trainer_config(
        str(model),
        str(data),
        str(tmp_path / name),
        cache_dir=tmp_path / "cache",
        training={"max_steps": 12, "batch_size": batch_size, **(training or {})},
    )
    config["runtime"]["device"] = "cpu"
    config["lora"]["dropout"] = dropout
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config))
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}"] if ranks > 1 else [sys.executable]
    )
    pythonpath = os.pathsep.join(str(ROOT / d) for d in ("api", "trainer"))
    result = subprocess.run(
        [*launcher, "-m", "kubetune_trainer.cli.kubetune_train", "--config", str(path)],
        env={**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return list(json.loads((tmp_path / name / "metrics.json").read_text())["loss_curve"])


def test_two_ranks_follow_the_single_process_loss_curve(
    tmp_path: Path, tiny_model_dir: Path, numbers_path: Path
) -> None:
    single = run(tmp_path, tiny_model_dir, numbers_path, "single", batch_size=8, ranks=1)
    ddp = run(tmp_path, tiny_model_dir, numbers_path, "ddp", batch_size=4, ranks=2)
    assert [p["step"] for p in ddp] == [p["step"] for p in single]
    assert [p["tokens"] for p in ddp] == [p["tokens"] for p in single], "tokens are summed over ranks"
    for a, b in zip(single, ddp, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-4), f"step {a['step']}"
    manifest = json.loads((tmp_path / "ddp" / "manifest.json").read_text())
    assert manifest["training"]["processes"] == 2


def rng_states(out: Path, step: int) -> list[dict[str, Any]]:
    folder = out / "checkpoints" / step_name(step) / RNG_DIR
    assert sorted(p.name for p in folder.iterdir()) == [rng_file(0), rng_file(1)]
    return [torch.load(folder / rng_file(rank), weights_only=False) for rank in (0, 1)]


def same_stream(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return bool(torch.equal(a["torch"], b["torch"])) and a["python"] == b["python"]


def test_each_rank_resumes_its_own_random_stream(tmp_path: Path, tiny_model_dir: Path, numbers_path: Path) -> None:
    """Two ranks with LoRA dropout draw from two streams; a resume from step 2 gives each rank back
    its own, so at step 4 both streams are exactly where the uninterrupted run had them. (Before
    per-rank states every rank got rank 0's stream back.)"""
    training = {"max_steps": 4, "checkpoint_every_steps": 2, "keep_checkpoints": 5}
    out = tmp_path / "rng"
    run(tmp_path, tiny_model_dir, numbers_path, "rng", batch_size=4, ranks=2, training=training, dropout=0.1)
    at_2, at_4 = rng_states(out, 2), rng_states(out, 4)
    assert not same_stream(*at_2) and not same_stream(*at_4), "the two ranks share a random stream"

    # As if the run had been killed after step 2: the step-4 checkpoint and everything published go.
    shutil.rmtree(out / "checkpoints" / step_name(4))
    (out / "manifest.json").unlink()
    run(tmp_path, tiny_model_dir, numbers_path, "rng", batch_size=4, ranks=2, training=training, dropout=0.1)
    resumed = rng_states(out, 4)
    assert same_stream(resumed[0], at_4[0]) and same_stream(resumed[1], at_4[1])
