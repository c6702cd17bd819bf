"""`kubetune-train --validate-only`: the operator's CPU preflight. It reads only tokenizer and
config files (never the weights), validates every row, and reports through the termination message."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import trainer_config, write_jsonl
from kubetune_api.protocol import FailureReason, PreflightReport, RunStatus, RunSummary
from kubetune_trainer.cli import kubetune_train


def run_preflight(tmp_path: Path, model_dir: Path, train: Path, *extra: str) -> tuple[int, Path]:
    config = trainer_config(
        str(model_dir),
        str(train),
        str(tmp_path / "out"),
        cache_dir=tmp_path / "cache",
        runtime={"cache_dir": str(tmp_path / "cache"), "termination_message_path": str(tmp_path / "term")},
    )
    path = tmp_path / "trainer.json"
    path.write_text(json.dumps(config))
    return kubetune_train.main(["--config", str(path), "--validate-only", *extra]), tmp_path / "term"


def test_preflight_reports_rows_tokens_and_steps_without_weights(
    tmp_path: Path, tiny_model_dir: Path, numbers_path: Path
) -> None:
    tokenizer_only = tmp_path / "model"
    shutil.copytree(tiny_model_dir, tokenizer_only, ignore=shutil.ignore_patterns("*.safetensors"))
    code, term = run_preflight(tmp_path, tokenizer_only, numbers_path)
    assert code == 0
    report = PreflightReport.model_validate_json(term.read_text())
    assert report.status == "Validated"
    assert report.data.train_rows == 900 and report.data.validation_rows == 100
    assert report.plan.total_steps > 0
    assert len(term.read_bytes()) <= 4096
    assert not (tmp_path / "out").exists(), "preflight must not write to the output"


def test_preflight_plans_for_the_training_gpus_and_estimates_memory(
    tmp_path: Path, tiny_model_dir: Path, numbers_path: Path
) -> None:
    """The preflight pod has no GPU; it plans for the GPUs the trainer will get."""
    code, term = run_preflight(tmp_path, tiny_model_dir, numbers_path, "--plan-for", "cuda", "--world-size=2")
    assert code == 0
    report = PreflightReport.model_validate_json(term.read_text())
    cpu_code, cpu_term = run_preflight(tmp_path, tiny_model_dir, numbers_path)
    cpu_report = PreflightReport.model_validate_json(cpu_term.read_text())
    assert cpu_code == 0 and cpu_report.memory is None
    memory = report.memory
    assert memory is not None
    assert memory.total_bytes == (
        memory.weights_bytes
        + memory.lora_training_bytes
        + memory.activation_bytes
        + memory.logits_bytes
        + memory.overhead_bytes
    )
    # two ranks share the rows: fewer steps than one CPU process with the same batch size
    assert report.plan.total_steps <= cpu_report.plan.total_steps


def test_preflight_fails_a_bad_dataset_with_a_user_error(tmp_path: Path, tiny_model_dir: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "a", "completion": " b"}, "{not json"])
    code, term = run_preflight(tmp_path, tiny_model_dir, train)
    assert code == 12
    summary = RunSummary.model_validate_json(term.read_text())
    assert summary.status == RunStatus.FAILED and summary.reason == FailureReason.DATASET_INVALID
    assert summary.user_error is True
    assert summary.message is not None and "train.jsonl line 2: invalid JSON" in summary.message
