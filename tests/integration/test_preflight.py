"""`kubetune-train --validate-only`: the operator's CPU preflight. It reads only tokenizer and
config files (never the weights), validates every row, and reports through the termination message."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path
from typing import Any

from conftest import trainer_config, upload_dir, write_jsonl
from kubetune_api.protocol import FailureReason, PreflightReport, RunStatus, RunSummary
from kubetune_trainer.cli import kubetune_train


def run_preflight(
    tmp_path: Path,
    model_dir: Path,
    train: Path | str,
    *extra: str,
    model_uri: str | None = None,
    endpoint: str | None = None,
) -> tuple[int, Path]:
    config = trainer_config(
        model_uri or str(model_dir),
        str(train),
        str(tmp_path / "out"),
        cache_dir=tmp_path / "cache",
        endpoint=endpoint,
        runtime={"cache_dir": str(tmp_path / "cache"), "termination_message_path": str(tmp_path / "term")},
    )
    path = tmp_path / "trainer.json"
    path.write_text(json.dumps(config))
    return kubetune_train.main(["--config", str(path), "--validate-only", *extra]), tmp_path / "term"


def test_preflight_reports_rows_tokens_and_steps_without_weights(
    tmp_path: Path, tiny_model_dir: Path, numbers_path: Path
) -> None:
    # Each weight file is cut down to its header: preflight reads the tensor shapes (to check
    # them against config.json) and nothing else, so it still validates.
    headers_only = tmp_path / "model"
    shutil.copytree(tiny_model_dir, headers_only, ignore=shutil.ignore_patterns("*.safetensors"))
    for weights in tiny_model_dir.glob("*.safetensors"):
        data = weights.read_bytes()
        (headers_only / weights.name).write_bytes(data[: 8 + int.from_bytes(data[:8], "little")])
    code, term = run_preflight(tmp_path, headers_only, numbers_path)
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


def test_preflight_reads_a_gzipped_export_from_s3_and_names_its_bad_line(
    tmp_path: Path, tiny_model_dir: Path, numbers_path: Path, s3_endpoint: str, s3_client: Any, bucket: str
) -> None:
    """The quickstart data as a Windows export script writes it (BOM, CRLF, a blank line, extra
    keys), gzip-compressed, staged from S3: every row counts; a bad row is named by its line."""
    rows = [json.loads(line) for line in numbers_path.read_text().splitlines()]
    lines = [json.dumps({**row, "exported_by": "sheet"}, ensure_ascii=False) for row in rows]
    exported = "\r\n".join([lines[0], "", *lines[1:]]) + "\r\n"
    s3_client.put_object(
        Bucket=bucket, Key="data/train.jsonl.gz", Body=gzip.compress(b"\xef\xbb\xbf" + exported.encode())
    )
    code, term = run_preflight(tmp_path, tiny_model_dir, f"s3://{bucket}/data/train.jsonl.gz", endpoint=s3_endpoint)
    assert code == 0, term.read_text()
    report = PreflightReport.model_validate_json(term.read_text())
    assert report.data.train_rows + report.data.validation_rows == len(rows)

    broken = "\r\n".join([lines[0], "", lines[1], '{"prompt": "7 + 1 =", "completion": 8}']) + "\r\n"
    s3_client.put_object(Bucket=bucket, Key="data/bad.jsonl.gz", Body=gzip.compress(broken.encode()))
    (tmp_path / "bad").mkdir()
    code, term = run_preflight(
        tmp_path / "bad", tiny_model_dir, f"s3://{bucket}/data/bad.jsonl.gz", endpoint=s3_endpoint
    )
    assert code == 12
    summary = RunSummary.model_validate_json(term.read_text())
    assert summary.message is not None and "bad.jsonl.gz line 4: field 'completion' must be a string" in (
        summary.message
    ), summary.message


def _copy_model(tiny_model_dir: Path, dest: Path) -> Path:
    shutil.copytree(tiny_model_dir, dest)
    return dest


def _failure(term: Path) -> RunSummary:
    summary = RunSummary.model_validate_json(term.read_text())
    assert summary.status == RunStatus.FAILED and summary.message is not None
    return summary


def test_preflight_refuses_a_model_folder_without_config_json(
    tmp_path: Path, tiny_model_dir: Path, numbers_path: Path
) -> None:
    model = _copy_model(tiny_model_dir, tmp_path / "model")
    (model / "config.json").unlink()
    code, term = run_preflight(tmp_path, model, numbers_path)
    summary = _failure(term)
    assert code == 13 and summary.reason == FailureReason.MODEL_INVALID and summary.user_error is True
    assert f"{model}/config.json: no config.json" in str(summary.message)


def test_preflight_refuses_an_unknown_model_type_as_unsupported_not_a_user_error(
    tmp_path: Path, tiny_model_dir: Path, numbers_path: Path
) -> None:
    model = _copy_model(tiny_model_dir, tmp_path / "model")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "model_type": "llama99"}))
    code, term = run_preflight(tmp_path, model, numbers_path)
    summary = _failure(term)
    assert code == 30 and summary.reason == FailureReason.UNSUPPORTED_MODEL and summary.user_error is False
    assert f"{model}/config.json: model_type 'llama99' is not known to transformers" in str(summary.message)
    assert "not supported by kubetune" in str(summary.message)


def test_preflight_refuses_weights_that_do_not_match_the_config(
    tmp_path: Path, tiny_model_dir: Path, numbers_path: Path
) -> None:
    # config.json says a larger hidden size than the weights were saved with.
    model = _copy_model(tiny_model_dir, tmp_path / "model")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "intermediate_size": config["intermediate_size"] * 2}))
    code, term = run_preflight(tmp_path, model, numbers_path)
    summary = _failure(term)
    assert code == 13 and summary.reason == FailureReason.MODEL_INVALID
    assert "model.safetensors: tensor model.layers.0.mlp." in str(summary.message)
    assert "config.json implies" in str(summary.message)


def test_preflight_refuses_a_corrupt_weights_header_naming_the_file(
    tmp_path: Path, tiny_model_dir: Path, numbers_path: Path
) -> None:
    model = _copy_model(tiny_model_dir, tmp_path / "model")
    (model / "model.safetensors").write_bytes((20).to_bytes(8, "little") + b"{this is not json!!}")
    code, term = run_preflight(tmp_path, model, numbers_path)
    summary = _failure(term)
    assert code == 13 and summary.reason == FailureReason.MODEL_INVALID
    assert f"{model}/model.safetensors: not a readable safetensors file" in str(summary.message)


def test_preflight_reads_weight_headers_from_s3_with_ranged_gets(
    tmp_path: Path, tiny_model_dir: Path, numbers_path: Path, s3_endpoint: str, s3_client: Any, bucket: str
) -> None:
    model = _copy_model(tiny_model_dir, tmp_path / "model")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "intermediate_size": config["intermediate_size"] * 2}))
    upload_dir(s3_client, model, bucket, "model")
    code, term = run_preflight(tmp_path, model, numbers_path, model_uri=f"s3://{bucket}/model/", endpoint=s3_endpoint)
    summary = _failure(term)
    assert code == 13 and summary.reason == FailureReason.MODEL_INVALID
    assert f"s3://{bucket}/model/: model.safetensors: tensor model.layers.0.mlp." in str(summary.message)
