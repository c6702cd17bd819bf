"""`kubetune validate` and `kubetune run` show the data-quality report (issue 13, item 1): the issue's
bad case (a chat dataset whose every row is cut at maxSeqLength, half of them to nothing) warns and,
with preflight.failOnWarnings, exits 16 (DataQualityFailed); the quickstart data has no warning."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from conftest import QUICKSTART, write_jsonl
from kubetune_api.protocol import PreflightReport, QualityCode
from kubetune_trainer.cli import kubetune

EXAMPLES = QUICKSTART.parent

MANIFEST = """\
apiVersion: kubetune.io/v1alpha1
kind: FineTuneJob
metadata:
  name: quality
spec:
  baseModel:
    uri: file://{model}/
  dataset:
    train: ./train.jsonl
  training:
    epochs: 1
    maxSeqLength: {max_seq_length}
  output:
    uri: ./out/
  preflight:
    failOnWarnings: {fail}
  resources:
    gpus: 0
"""


def _in_words(n: int) -> str:
    spec = importlib.util.spec_from_file_location("quickstart_dataset", QUICKSTART / "make_dataset.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    words: str = module.in_words(n)
    return words


def truncated_chat_rows() -> list[dict[str, object]]:
    """60 conversations, every one longer than 116 tokens (the template's markers are long in the
    tiny tokenizer); in those with two numbers the answer starts past the cut and is lost."""
    rows: list[dict[str, object]] = []
    for i in range(60):
        numbers = [100 + 7 * i + k for k in range(1 + i % 2)]
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": "convert number words to digits"},
                    {"role": "user", "content": ", ".join(_in_words(n) for n in numbers)},
                    {"role": "assistant", "content": ", ".join(str(n) for n in numbers)},
                ]
            }
        )
    return rows


def job(tmp_path: Path, model: Path, train: Path, max_seq_length: int = 116, fail: bool = False) -> Path:
    if train != tmp_path / "train.jsonl":
        shutil.copy(train, tmp_path / "train.jsonl")
    path = tmp_path / "job.yaml"
    path.write_text(MANIFEST.format(model=model, max_seq_length=max_seq_length, fail=str(fail).lower()))
    return path


def validate(tmp_path: Path, manifest: Path, *flags: str) -> int:
    return kubetune.main(["validate", str(manifest), "--cache-dir", str(tmp_path / "cache"), *flags])


def test_the_issues_bad_case_warns_and_names_the_length_that_fits(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", truncated_chat_rows())
    manifest = job(tmp_path, tiny_model_dir, train)
    assert validate(tmp_path, manifest, "--json") == 0, "without failOnWarnings, warnings do not fail"
    report = PreflightReport.model_validate(json.loads(capsys.readouterr().out))
    quality = report.quality
    assert quality is not None
    assert (quality.rows, quality.truncated_rows, quality.truncated_share) == (60, 60, 1.0)
    assert quality.dropped_rows == 30 and quality.trainable_tokens < 1000
    assert quality.train_lengths.p95 > 116 and quality.rows_per_format == {"chat": 60}
    codes = [w.code for w in quality.warnings]
    assert codes == [QualityCode.TRUNCATED_ROWS, QualityCode.DROPPED_ROWS, QualityCode.FEW_TRAINABLE_TOKENS]
    truncated = quality.warnings[0]
    assert truncated.field == "training.maxSeqLength" and truncated.example == "train.jsonl:1"
    assert truncated.message.startswith("60 of 60 rows (100%) are longer than training.maxSeqLength=116 and are cut")
    assert "training.maxSeqLength: 192 would fit 95% of training rows" in truncated.message

    assert validate(tmp_path, manifest) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "truncated rows │ 60 of 60 (100.0%)" in out
    assert "warning TruncatedRows [training.maxSeqLength]: 60 of 60 rows (100%)" in out
    assert "warning DroppedRows [training.maxSeqLength]: 30 rows lost every trainable token" in out


def test_fail_on_warnings_in_the_manifest_or_as_a_flag_exits_16_naming_each_warning(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", truncated_chat_rows())
    assert validate(tmp_path, job(tmp_path, tiny_model_dir, train), "--json", "--fail-on-warnings") == 16
    captured = capsys.readouterr()
    assert PreflightReport.model_validate(json.loads(captured.out)).quality is not None, "the report is still printed"
    assert captured.err.startswith(
        "error: DataQualityFailed (user error): preflight.failOnWarnings is true and the data-quality report has "
        "3 warning(s): TruncatedRows: 60 of 60 rows"
    )
    assert "; DroppedRows: 30 rows" in captured.err and "; FewTrainableTokens: only" in captured.err
    assert validate(tmp_path, job(tmp_path, tiny_model_dir, train, fail=True)) == 16


def test_the_quickstart_data_has_no_warning(
    tmp_path: Path, tiny_model_dir: Path, numbers_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = job(tmp_path, tiny_model_dir, numbers_path, max_seq_length=128, fail=True)
    assert validate(tmp_path, manifest, "--json") == 0
    quality = PreflightReport.model_validate(json.loads(capsys.readouterr().out)).quality
    assert quality is not None and quality.warnings == []
    assert (quality.rows, quality.truncated_rows, quality.duplicate_rows, quality.near_duplicate_rows) == (
        1000,
        0,
        0,
        0,
    )
    assert quality.leaked_validation_rows == 0 and quality.empty_answers == 0
    assert quality.rows_per_format == {"completion": 1000}
    assert validate(tmp_path, manifest) == 0
    assert "data quality: no warnings" in capsys.readouterr().out


def test_the_bad_example_dataset_raises_every_warning(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """examples/bad-data (duplicates, leakage, truncation, empty answers, a mixed row) as committed."""
    for name in ("train.jsonl", "validation.jsonl"):
        shutil.copy(EXAMPLES / "bad-data" / name, tmp_path / name)
    manifest = tmp_path / "job.yaml"
    text = (EXAMPLES / "bad-data" / "finetunejob.yaml").read_text()
    manifest.write_text(text.replace("file://../quickstart/model/", f"file://{tiny_model_dir}/"))
    assert validate(tmp_path, manifest, "--json") == 16
    quality = PreflightReport.model_validate(json.loads(capsys.readouterr().out)).quality
    assert quality is not None and [w.code for w in quality.warnings] == list(QualityCode)
    assert (quality.duplicate_rows, quality.leaked_validation_rows, quality.empty_answers) == (4, 3, 2)
    assert quality.rows_per_format == {"chat": 1, "completion": 63}


def test_kubetune_run_honours_fail_on_warnings_before_loading_the_model(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", truncated_chat_rows())
    manifest = job(tmp_path, tiny_model_dir, train, fail=True)
    code = kubetune.main(["run", str(manifest), "--cache-dir", str(tmp_path / "cache"), "--no-progress"])
    assert code == 16
    err = capsys.readouterr().err
    summary = json.loads(err.strip().splitlines()[-1])
    assert summary["reason"] == "DataQualityFailed" and summary["exitCode"] == 16 and summary["userError"] is True
    assert "TruncatedRows: 60 of 60 rows" in summary["message"]
    assert not list((tmp_path / "out").glob("**/*.safetensors")), "nothing trained, nothing published"
