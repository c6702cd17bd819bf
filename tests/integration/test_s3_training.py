"""End to end through a real S3 API (SeaweedFS on 127.0.0.1): stage, train, publish, resume.

The trainer runs as `kubetune-train --config trainer.json` in a subprocess, the way the pod
runs it, so SIGKILL and SIGTERM are real signals to a real process.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import torch

from conftest import free_port, keys_under, trainer_config, trainer_process
from kubetune_api.protocol import FailureReason, ProgressReport, RunStatus, RunSummary

pytestmark = [pytest.mark.slow, pytest.mark.s3]

# Long enough (90 steps) that a test can stop it mid-run; still a few seconds.
LONG_TRAINING = {"max_steps": 90, "batch_size": 2, "checkpoint_every_steps": 20, "keep_checkpoints": 2}


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(json.dumps(config, indent=2))
    return path


def wait_for_step(port: int, proc: subprocess.Popen[str], step: int, need_checkpoint: bool) -> ProgressReport:
    """Poll the trainer's own /progress endpoint until it reaches `step`."""
    deadline = time.time() + 240
    while time.time() < deadline:
        assert proc.poll() is None, f"trainer exited early: {proc.communicate()}"
        try:
            document = requests.get(f"http://127.0.0.1:{port}/progress", timeout=2).json()
            progress = ProgressReport.model_validate(document)
        except requests.ConnectionError:
            time.sleep(0.05)
            continue
        if progress.step >= step and (progress.checkpoints or not need_checkpoint):
            return progress
        time.sleep(0.02)
    raise AssertionError("trainer did not reach the step in time")


def loss_curve(s3_client: Any, bucket: str, prefix: str) -> list[dict[str, float]]:
    body = s3_client.get_object(Bucket=bucket, Key=f"{prefix}/metrics.json")["Body"].read()
    return list(json.loads(body)["loss_curve"])


def test_trains_from_s3_to_s3_and_publishes_every_artifact(
    staged_on_s3: dict[str, str], s3_endpoint: str, s3_env: dict[str, str], s3_client: Any, bucket: str, tmp_path: Path
) -> None:
    config = trainer_config(
        staged_on_s3["model"],
        staged_on_s3["train"],
        f"s3://{bucket}/runs/one/",
        cache_dir=tmp_path / "cache",
        endpoint=s3_endpoint,
        evaluation={"exact_match": True, "max_samples": 20, "max_new_tokens": 5},
        runtime={"cache_dir": str(tmp_path / "cache"), "termination_message_path": str(tmp_path / "term")},
    )
    proc = trainer_process(write_config(tmp_path / "trainer.json", config), s3_env)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err

    keys = keys_under(s3_client, bucket, "runs/one")
    for artifact in (
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "metrics.json",
        "eval.json",
        "loss_curve.png",
        "README.md",
        "manifest.json",
    ):
        assert artifact in keys, f"{artifact} missing from {sorted(keys)}"
    manifest = json.loads(s3_client.get_object(Bucket=bucket, Key="runs/one/manifest.json")["Body"].read())
    assert manifest["datasets"][0]["uri"] == staged_on_s3["train"] and manifest["datasets"][0]["etag"]
    assert manifest["baseModel"]["sha256"] and manifest["libraries"]["torch"]
    assert manifest["training"]["trainedTokens"] > 0
    assert set(manifest["artifacts"]) >= {"adapter_model.safetensors", "eval.json"}
    evals = json.loads(s3_client.get_object(Bucket=bucket, Key="runs/one/eval.json")["Body"].read())
    assert evals["finetuned"]["loss"] < evals["baseline"]["loss"]
    assert "exact_match" in evals["baseline"] and "exact_match" in evals["finetuned"]

    summary = RunSummary.model_validate_json((tmp_path / "term").read_text())
    assert summary.status == RunStatus.SUCCEEDED
    assert summary.manifest_uri is not None and summary.manifest_uri.endswith("runs/one/manifest.json")
    assert len((tmp_path / "term").read_bytes()) <= 4096
    # Credentials never reach the artifacts.
    assert "testing" not in json.dumps(manifest)


def test_second_run_reuses_the_download_cache(
    staged_on_s3: dict[str, str], s3_endpoint: str, s3_env: dict[str, str], bucket: str, tmp_path: Path
) -> None:
    from kubetune_api.spec import StorageSpec
    from kubetune_trainer.storage import Storage

    storage = Storage(StorageSpec(endpoint=s3_endpoint, addressing_style="path"), tmp_path / "cache")
    first = storage.stage_dir(staged_on_s3["model"])
    mtimes = {p: p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file()}
    again = storage.stage_dir(staged_on_s3["model"])
    assert again == first
    assert {p: p.stat().st_mtime_ns for p in again.rglob("*") if p.is_file()} == mtimes
    assert (first / "config.json").read_bytes()


def test_killed_run_resumes_from_checkpoint_and_matches_uninterrupted_run(
    staged_on_s3: dict[str, str], s3_endpoint: str, s3_env: dict[str, str], s3_client: Any, bucket: str, tmp_path: Path
) -> None:
    def config_for(name: str, port: int | None = None) -> Path:
        config = trainer_config(
            staged_on_s3["model"],
            staged_on_s3["train"],
            f"s3://{bucket}/runs/{name}/",
            cache_dir=tmp_path / "cache",
            endpoint=s3_endpoint,
            training=LONG_TRAINING,
            runtime={"cache_dir": str(tmp_path / "cache"), "metrics_port": port, "metrics_host": "127.0.0.1"},
        )
        return write_config(tmp_path / f"{name}-{port}.json", config)

    reference = trainer_process(config_for("reference"), s3_env)
    port = free_port()
    victim = trainer_process(config_for("resumed", port), s3_env)
    killed_at = wait_for_step(port, victim, step=45, need_checkpoint=True)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert killed_at.step < killed_at.total_steps, "the run finished before it could be killed"
    assert "manifest.json" not in keys_under(s3_client, bucket, "runs/resumed")

    resumed = trainer_process(config_for("resumed"), s3_env)
    _, resumed_err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, resumed_err
    assert "resumed from checkpoint step" in resumed_err
    _, reference_err = reference.communicate(timeout=300)
    assert reference.returncode == 0, reference_err

    expected = loss_curve(s3_client, bucket, "runs/reference")
    got = loss_curve(s3_client, bucket, "runs/resumed")
    assert [p["step"] for p in got] == [p["step"] for p in expected]
    for want, have in zip(expected, got, strict=True):
        assert have["loss"] == pytest.approx(want["loss"], rel=1e-3, abs=1e-4), f"step {want['step']}"
    # Only `keep_checkpoints` complete checkpoints remain.
    steps = {k.split("/")[1] for k in keys_under(s3_client, bucket, "runs/resumed") if k.startswith("checkpoints/")}
    assert len(steps) == LONG_TRAINING["keep_checkpoints"]


def test_sigterm_saves_a_checkpoint_then_exits_143(
    staged_on_s3: dict[str, str], s3_endpoint: str, s3_env: dict[str, str], s3_client: Any, bucket: str, tmp_path: Path
) -> None:
    port = free_port()
    config = trainer_config(
        staged_on_s3["model"],
        staged_on_s3["train"],
        f"s3://{bucket}/runs/term/",
        cache_dir=tmp_path / "cache",
        endpoint=s3_endpoint,
        training={**LONG_TRAINING, "checkpoint_every_steps": 1000},
        runtime={
            "cache_dir": str(tmp_path / "cache"),
            "metrics_port": port,
            "metrics_host": "127.0.0.1",
            "termination_message_path": str(tmp_path / "term"),
        },
    )
    path = write_config(tmp_path / "trainer.json", config)
    proc = trainer_process(path, s3_env)
    wait_for_step(port, proc, step=10, need_checkpoint=False)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err

    summary = RunSummary.model_validate_json((tmp_path / "term").read_text())
    assert summary.status == RunStatus.PREEMPTED and summary.reason == FailureReason.PREEMPTED
    keys = keys_under(s3_client, bucket, "runs/term")
    markers = sorted(k for k in keys if k.endswith("/COMPLETE"))
    assert len(markers) == 1, keys  # no periodic checkpoint was due: this one is SIGTERM's
    step = int(markers[0].split("/")[1].removeprefix("step-"))
    assert step >= 10
    assert "manifest.json" not in keys


def test_exported_adapter_loads_with_peft_and_matches_in_memory_model(
    tiny_model_dir: Path, numbers_path: Path, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from kubetune_api.trainer_config import TrainerConfig
    from kubetune_trainer.progress import ProgressReporter
    from kubetune_trainer.recipe import LoRAFinetuneRecipe

    config = TrainerConfig.model_validate(
        trainer_config(
            str(tiny_model_dir),
            str(numbers_path),
            str(tmp_path / "out"),
            cache_dir=tmp_path / "cache",
            training={"max_steps": 15},
        )
    )
    recipe = LoRAFinetuneRecipe(config, ProgressReporter("t", None), threading.Event(), tmp_path / "work")
    summary = recipe.run()
    assert summary.status == RunStatus.SUCCEEDED

    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "out")
    loaded.eval()
    in_memory = recipe.model.eval()
    ids = torch.tensor([[1, 30, 40, 50, 60, 70, 80]])
    with torch.no_grad():
        expected = in_memory(input_ids=ids, use_cache=False).logits
        got = loaded(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # ...and training really changed the adapter: it differs from the bare base model.
    with torch.no_grad(), loaded.disable_adapter():
        base = loaded(input_ids=ids, use_cache=False).logits
    assert not torch.allclose(base, expected, atol=1e-4)


def test_merged_weights_match_the_adapter(tiny_model_dir: Path, numbers_path: Path, tmp_path: Path) -> None:
    """output.mergeAdapter writes full weights under merged/ that behave like base + adapter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from kubetune_api.trainer_config import TrainerConfig
    from kubetune_trainer.recipe import run_training

    config = TrainerConfig.model_validate(
        trainer_config(
            str(tiny_model_dir),
            str(numbers_path),
            str(tmp_path / "out"),
            cache_dir=tmp_path / "cache",
            training={"max_steps": 10},
            output={"uri": str(tmp_path / "out"), "merge_adapter": True},
        )
    )
    assert run_training(config).status == RunStatus.SUCCEEDED
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "merged").eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "out").eval()
    ids = torch.tensor([[1, 30, 40, 50, 60]])
    with torch.no_grad():
        torch.testing.assert_close(
            merged(input_ids=ids, use_cache=False).logits,
            adapted(input_ids=ids, use_cache=False).logits,
            rtol=1e-4,
            atol=1e-4,
        )
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert "merged/model.safetensors" in manifest["artifacts"]
    # the model card serves merged/ as a plain model, next to the LoRA snippets
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"vllm serve {tmp_path / 'out' / 'merged'} --served-model-name " in card
    assert "### Merged weights (no LoRA)" in card and "--enable-lora" in card
