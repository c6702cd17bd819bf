"""Data-parallel training without a GPU: two ranks under torchrun (gloo on CPU).

The multi-GPU code path (rank sharding of micro-batches, loss normalised over all ranks,
DDP gradient averaging undone, only rank 0 writing) is the same on CPU. Two ranks with
batchSize 4 must follow the same loss curve as one process with batchSize 8.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, trainer_config

pytestmark = pytest.mark.slow


def run(tmp_path: Path, model: Path, data: Path, name: str, batch_size: int, ranks: int) -> list[dict[str, float]]:
    config = trainer_config(
        str(model),
        str(data),
        str(tmp_path / name),
        cache_dir=tmp_path / "cache",
        training={"max_steps": 12, "batch_size": batch_size},
    )
    config["runtime"]["device"] = "cpu"
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
