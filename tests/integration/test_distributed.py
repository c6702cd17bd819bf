"""Data-parallel training without a GPU: two ranks under torchrun (gloo on CPU).

The multi-GPU code path (rank sharding of micro-batches, loss normalised over all ranks,
DDP gradient averaging undone, only rank 0 writing) is the same on CPU. Two ranks with
batchSize 4 must follow the same loss curve as one process with batchSize 8.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import ROOT, trainer_config
from kubetune_trainer.checkpoint import RNG_DIR, rng_file, step_name

pytestmark = pytest.mark.slow


def command(
    tmp_path: Path,
    model: Path,
    data: Path,
    name: str,
    batch_size: int,
    ranks: int,
    training: dict[str, Any] | None = None,
    dropout: float = 0.0,
) -> tuple[list[str], dict[str, str]]:
    """The trainer's command line (under torchrun for several ranks) and its environment."""
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
    env = {**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1"}
    return [*launcher, "-m", "kubetune_trainer.cli.kubetune_train", "--config", str(path)], env


def run(tmp_path: Path, model: Path, data: Path, name: str, *args: Any, **kwargs: Any) -> list[dict[str, float]]:
    """command() run to the end; its loss curve. Takes command()'s arguments."""
    argv, env = command(tmp_path, model, data, name, *args, **kwargs)
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)
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


# -- FSDP2 (issue 11, items 1-2) --------------------------------------------------------------------


def adapter(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "adapter_model.safetensors"))


def test_fsdp_two_ranks_follow_the_single_process_loss_curve_and_publish_the_same_adapter(
    tmp_path: Path, tiny_model_dir: Path, numbers_path: Path
) -> None:
    """FSDP2 over two gloo ranks: base and adapter sharded, the same maths as one process."""
    single = run(tmp_path, tiny_model_dir, numbers_path, "single", batch_size=8, ranks=1)
    fsdp = run(tmp_path, tiny_model_dir, numbers_path, "fsdp", batch_size=4, ranks=2, training={"sharding": "fsdp"})
    assert [p["tokens"] for p in fsdp] == [p["tokens"] for p in single]
    for a, b in zip(single, fsdp, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-4), f"step {a['step']}"
    manifest = json.loads((tmp_path / "fsdp" / "manifest.json").read_text())
    assert (manifest["training"]["processes"], manifest["training"]["sharding"]) == (2, "fsdp")
    want, got = adapter(tmp_path / "single"), adapter(tmp_path / "fsdp")
    assert want.keys() == got.keys() and len(got) > 0
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-4, rtol=1e-3, msg=name)


@pytest.mark.parametrize(("first", "second"), [(2, 1), (1, 2)], ids=["2-ranks-then-1", "1-rank-then-2"])
def test_fsdp_resumes_on_another_world_size_to_the_uninterrupted_adapter(
    tmp_path: Path, tiny_model_dir: Path, numbers_path: Path, first: int, second: int
) -> None:
    """A checkpoint at step 6 of 12, as if the run were killed there, resumed with another number of
    ranks: the final adapter equals the uninterrupted run's, and no adapter tensor on any rank is
    left at its initial value (accelerate#4206: resuming LoRA under FSDP2 reverted (N-1)/N of it)."""
    training = {"sharding": "fsdp", "checkpoint_every_steps": 6, "keep_checkpoints": 5}
    per_rank = {1: 8, 2: 4}  # the same rows per optimizer step
    run(tmp_path, tiny_model_dir, numbers_path, "whole", batch_size=8, ranks=1, training=training)
    run(tmp_path, tiny_model_dir, numbers_path, "cut", batch_size=per_rank[first], ranks=first, training=training)
    out = tmp_path / "cut"
    for later in (step_name(12),):
        shutil.rmtree(out / "checkpoints" / later)
    (out / "manifest.json").unlink()
    run(tmp_path, tiny_model_dir, numbers_path, "cut", batch_size=per_rank[second], ranks=second, training=training)
    assert json.loads((out / "manifest.json").read_text())["training"]["processes"] == second
    want, got = adapter(tmp_path / "whole"), adapter(out)
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-4, rtol=1e-3, msg=name)
    # LoRA B starts at zero: a tensor still all zero after 12 steps was never trained or was reverted.
    untrained = [name for name, tensor in got.items() if "lora_B" in name and not tensor.any()]
    assert not untrained, untrained


def test_fsdp_run_sigkilled_after_a_checkpoint_resumes_to_the_uninterrupted_adapter(
    tmp_path: Path, tiny_model_dir: Path, numbers_path: Path
) -> None:
    """Both ranks and their launcher SIGKILLed (the whole process group, as when a node dies) once a
    checkpoint is complete; the next attempt resumes from it and ends where an uninterrupted run does."""
    training = {"sharding": "fsdp", "max_steps": 120, "checkpoint_every_steps": 10, "keep_checkpoints": 2}
    run(tmp_path, tiny_model_dir, numbers_path, "whole", batch_size=4, ranks=2, training=training)
    argv, env = command(tmp_path, tiny_model_dir, numbers_path, "killed", batch_size=4, ranks=2, training=training)
    checkpoints = tmp_path / "killed" / "checkpoints"
    victim = subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 240
    while not any(checkpoints.glob("step-*/COMPLETE")) and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    assert not (tmp_path / "killed" / "manifest.json").exists(), "the run finished before it could be killed"
    run(tmp_path, tiny_model_dir, numbers_path, "killed", batch_size=4, ranks=2, training=training)
    want, got = adapter(tmp_path / "whole"), adapter(tmp_path / "killed")
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-4, rtol=1e-3, msg=name)
    curve = json.loads((tmp_path / "killed" / "metrics.json").read_text())["loss_curve"]
    assert [p["step"] for p in curve] == list(range(1, 121)), "every step once, in order, across the kill"
