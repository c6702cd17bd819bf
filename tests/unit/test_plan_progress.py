"""Planning (epochs, batch size, steps), live progress over HTTP, and the termination summary."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from kubetune_api.protocol import (
    TERMINATION_MESSAGE_LIMIT_BYTES,
    CheckpointRecord,
    DataStats,
    EvalResult,
    Evaluations,
    FailureReason,
    ProgressReport,
    RunStatus,
    RunSummary,
    TrainerPhase,
)
from kubetune_api.spec import TrainingSpec
from kubetune_trainer.errors import DatasetInvalid, Preempted, failure_summary
from kubetune_trainer.prepare import plan_steps, resolve_batch_size, resolve_epochs
from kubetune_trainer.progress import ProgressReporter


def training(**values: Any) -> TrainingSpec:
    return TrainingSpec.model_validate(values)


def stats(train_rows: int, train_sequences: int, train_tokens: int) -> DataStats:
    return DataStats(
        format="completion",
        train_rows=train_rows,
        validation_rows=0,
        train_tokens=train_tokens,
        trainable_tokens=train_tokens // 2,
        validation_tokens=0,
        truncated_rows=0,
        dropped_rows=0,
        max_row_tokens=64,
        mean_row_tokens=train_tokens / max(1, train_rows),
        train_sequences=train_sequences,
        packing_efficiency=1.0,
    )


# -- epochs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_examples", "epochs"),
    [
        (34, 3),  # 102 examples seen: the default holds
        (1000, 3),
        (8333, 3),  # 24,999 seen: still 3
        (33, 4),  # 99 seen: raised to ceil(100 / 33)
        (10, 10),
        (5, 20),
        (4, 25),
        (1, 25),  # capped at 25
        (0, 25),
        (8334, 2),  # 25,002 seen: lowered to 25,000 // n
        (12_500, 2),
        (12_501, 1),
        (1_000_000, 1),  # never below 1
    ],
)
def test_auto_epochs_heuristic(n_examples: int, epochs: int) -> None:
    """epochs: auto is 3, raised so at least 100 examples are seen (max 25), lowered so at most 25,000 are."""
    assert resolve_epochs(training(), n_examples) == epochs


@pytest.mark.parametrize("n_examples", [1, 50, 1_000_000])
def test_explicit_epochs_win(n_examples: int) -> None:
    """An explicit epoch count is used as is, whatever the data size."""
    assert resolve_epochs(training(epochs=7), n_examples) == 7


def test_plan_from_epochs() -> None:
    """Steps per epoch = ceil(sequences / (batch * world) / accumulation); warmup is a share of all steps."""
    spec = training(epochs=3, batch_size=4, gradient_accumulation_steps=2, warmup_ratio=0.1)
    result = plan_steps(spec, stats(train_rows=100, train_sequences=50, train_tokens=5000), "cpu")
    assert (result.epochs, result.batch_size, result.gradient_accumulation_steps) == (3, 4, 2)
    assert result.steps_per_epoch == 7  # 13 micro-batches -> 7 optimizer steps
    assert result.total_steps == 21
    assert result.warmup_steps == 2
    two_gpus = plan_steps(spec, stats(train_rows=100, train_sequences=50, train_tokens=5000), "cuda", world_size=2)
    assert two_gpus.steps_per_epoch == 4  # 7 micro-batches per rank


def test_plan_max_steps_overrides_epochs() -> None:
    """maxSteps sets the total; epochs then report how many passes that is (rounded up)."""
    spec = training(epochs=3, batch_size=4, max_steps=10)
    result = plan_steps(spec, stats(train_rows=100, train_sequences=16, train_tokens=1600), "cpu")
    assert result.steps_per_epoch == 4
    assert result.total_steps == 10
    assert result.epochs == 3
    short = plan_steps(training(batch_size=4, max_steps=2), stats(100, 16, 1600), "cpu")
    assert (short.total_steps, short.epochs) == (2, 1)


def test_plan_uses_auto_epochs_on_rows() -> None:
    """Auto epochs are decided from training rows, not packed sequences."""
    result = plan_steps(training(batch_size=1), stats(train_rows=10, train_sequences=2, train_tokens=200), "cpu")
    assert result.epochs == 10
    assert result.total_steps == 20


# -- batch size ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device", "max_seq_length", "expected"),
    [
        ("cpu", 2048, 2),  # 4k tokens per micro-step
        ("cuda", 2048, 8),  # 16k tokens per micro-step
        ("cpu", 128, 32),
        ("cuda", 128, 128),
        ("cuda", 16, 256),  # capped at 256
        ("cpu", 8192, 1),  # never below 1
        ("mps", 2048, 2),  # unknown devices get the CPU budget
    ],
)
def test_auto_batch_size_packed(device: str, max_seq_length: int, expected: int) -> None:
    """With packing, auto batch size is the device's token budget over maxSeqLength."""
    spec = training(max_seq_length=max_seq_length)
    assert resolve_batch_size(spec, device, mean_sequence_tokens=10.0) == expected


def test_auto_batch_size_unpacked_uses_mean_length() -> None:
    """Without packing, sequences are as long as rows: the budget is divided by the mean length."""
    spec = training(max_seq_length=2048, packing=False)
    assert resolve_batch_size(spec, "cpu", mean_sequence_tokens=100.0) == 40
    assert resolve_batch_size(spec, "cuda", mean_sequence_tokens=100.0) == 163
    assert resolve_batch_size(spec, "cuda", mean_sequence_tokens=0.0) == 256


def test_explicit_batch_size_wins() -> None:
    """An explicit batch size is used on any device."""
    for device in ("cpu", "cuda"):
        assert resolve_batch_size(training(batch_size=3), device, 100.0) == 3


# -- progress reporting ----------------------------------------------------------------------------


def test_progress_report_wire_is_camel_case() -> None:
    """The /progress document uses camelCase keys and includes the progress ratio."""
    report = ProgressReport(step=5, total_steps=20, train_loss=1.5, eta_seconds=30.0, last_update_time=1.0)
    doc = report.to_wire()
    for key in ("phase", "step", "totalSteps", "trainLoss", "etaSeconds", "progressRatio"):
        assert key in doc
    assert "lastUpdateTime" in doc and "trainedTokens" in doc
    assert all("_" not in key for key in doc)
    assert doc["progressRatio"] == 0.25
    assert ProgressReport.model_validate(doc) == report  # the operator reads back what the trainer wrote
    assert ProgressReport().progress_ratio == 0.0  # no plan yet: no division by zero
    assert ProgressReport(step=30, total_steps=20).progress_ratio == 1.0


def test_reporter_update_rejects_unknown_fields() -> None:
    """A misspelt field is an error, not a silently missing value on /progress."""
    rep = ProgressReporter("numbers", None)
    with pytest.raises(TypeError, match="trainloss"):
        rep.update(trainloss=1.0)


@pytest.fixture
def reporter() -> Iterator[tuple[ProgressReporter, str]]:
    rep = ProgressReporter("numbers", "ml")
    port = rep.serve("127.0.0.1", 0)
    assert port > 0
    try:
        yield rep, f"http://127.0.0.1:{port}"
    finally:
        rep.close()


def _get(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.headers["Content-Type"], response.read().decode()


def test_metrics_endpoint(reporter: tuple[ProgressReporter, str]) -> None:
    """/metrics is Prometheus text with the job's series labelled by finetunejob and namespace."""
    rep, base = reporter
    rep.update(phase=TrainerPhase.RUNNING, step=3, total_steps=12, train_loss=0.5, new_tokens=640, new_checkpoints=1)
    ctype, text = _get(f"{base}/metrics")
    assert ctype.startswith("text/plain")
    labels = 'finetunejob="numbers",finetunejob_namespace="ml"'
    assert f"kubetune_trainer_step{{{labels}}} 3.0" in text
    assert f"kubetune_trainer_total_steps{{{labels}}} 12.0" in text
    assert f"kubetune_trainer_train_loss{{{labels}}} 0.5" in text
    assert f"kubetune_trainer_progress_ratio{{{labels}}} 0.25" in text
    assert f"kubetune_trainer_trained_tokens_total{{{labels}}} 640.0" in text
    assert f"kubetune_trainer_checkpoints_total{{{labels}}} 1.0" in text
    assert "# TYPE kubetune_trainer_step gauge" in text


def test_counters_exported_before_first_increment(reporter: tuple[ProgressReporter, str]) -> None:
    """Counters exist at 0 from the start, so rate() works from the first scrape."""
    _, base = reporter
    _, text = _get(f"{base}/metrics")
    assert 'kubetune_trainer_trained_tokens_total{finetunejob="numbers",finetunejob_namespace="ml"} 0.0' in text


def test_progress_endpoint(reporter: tuple[ProgressReporter, str]) -> None:
    """/progress serves the current ProgressReport as camelCase JSON, checkpoints included."""
    rep, base = reporter
    saved = CheckpointRecord(step=4, uri="s3://runs/x/checkpoints/step-00000004", time=1.0)
    rep.update(
        phase=TrainerPhase.RUNNING, step=4, total_steps=16, train_loss=1.25, eta_seconds=60.0, checkpoints=[saved]
    )
    ctype, body = _get(f"{base}/progress?ignored=1")
    assert ctype == "application/json"
    doc = json.loads(body)
    assert doc == rep.snapshot()
    report = ProgressReport.model_validate(doc)
    assert report.phase is TrainerPhase.RUNNING
    assert (report.step, report.total_steps, report.progress_ratio) == (4, 16, 0.25)
    assert (report.train_loss, report.eta_seconds, report.eval_loss) == (1.25, 60.0, None)
    assert report.checkpoints == [saved]


def test_health_and_unknown_paths(reporter: tuple[ProgressReporter, str]) -> None:
    """/healthz and /readyz answer ok; other paths are 404."""
    _, base = reporter
    assert _get(f"{base}/healthz")[1] == "ok"
    assert _get(f"{base}/readyz")[1] == "ok"
    with pytest.raises(urllib.error.HTTPError) as info:
        _get(f"{base}/nope")
    assert info.value.code == 404


def test_close_stops_serving() -> None:
    """After close() the port no longer answers."""
    rep = ProgressReporter("numbers", None)
    port = rep.serve("127.0.0.1", 0)
    rep.close()
    with pytest.raises(urllib.error.URLError):
        _get(f"http://127.0.0.1:{port}/healthz")
    rep.close()  # idempotent


# -- termination summary ---------------------------------------------------------------------------


@pytest.mark.parametrize("message", ["x" * 10_000, "é" * 10_000, 'quote " and \n newline ' * 500, "☕" * 3000])
def test_summary_fits_termination_message(message: str) -> None:
    """A failure summary with a huge message stays <= 4096 bytes, valid JSON, the message cut with an ellipsis."""
    summary = RunSummary(
        status=RunStatus.FAILED, job="numbers", reason=FailureReason.DATASET_INVALID, message=message, exit_code=12
    )
    text = summary.to_termination_message()
    assert len(text.encode("utf-8")) <= TERMINATION_MESSAGE_LIMIT_BYTES == 4096
    parsed = RunSummary.model_validate_json(text)
    assert (parsed.status, parsed.job, parsed.reason) == (RunStatus.FAILED, "numbers", FailureReason.DATASET_INVALID)
    assert parsed.message is not None and parsed.message.endswith("…")
    assert message.startswith(parsed.message[:-1])


def test_summary_small_is_complete() -> None:
    """A small summary is not cut; None fields are left out; evaluations carry no exact-match examples."""
    full_eval = {"loss": 0.5, "exact_match": 0.75, "samples": 4, "examples": [{"prompt": "p" * 5000}]}
    summary = RunSummary(
        status=RunStatus.SUCCEEDED,
        job="numbers",
        step=10,
        total_steps=10,
        eval=Evaluations(finetuned=EvalResult.model_validate(full_eval)),
    )
    text = summary.to_termination_message()
    assert "message" not in json.loads(text) and "reason" not in json.loads(text)
    parsed = RunSummary.model_validate_json(text)
    assert parsed == summary
    assert parsed.eval == Evaluations(finetuned=EvalResult(loss=0.5, exact_match=0.75, samples=4))


def test_failure_summary_from_error() -> None:
    """A KubetuneError becomes a Failed (or Preempted) summary with its reason, exit code and blame."""
    failed = failure_summary("numbers", DatasetInvalid("train.jsonl: the file has no rows"), started=0.0)
    assert (failed.status, failed.reason, failed.exit_code, failed.user_error) == (
        RunStatus.FAILED,
        FailureReason.DATASET_INVALID,
        12,
        True,
    )
    assert failed.message == "DatasetInvalid (user error): train.jsonl: the file has no rows"
    preempted = failure_summary("numbers", Preempted("SIGTERM"), started=0.0)
    assert (preempted.status, preempted.exit_code, preempted.user_error) == (RunStatus.PREEMPTED, 143, False)


def test_summary_with_long_uris_is_still_json() -> None:
    """Whatever is cut to fit 4 KB, the termination message stays parseable."""
    uri = "s3://bucket/" + "a" * 2030 + "/"
    summary = RunSummary(status=RunStatus.SUCCEEDED, job="numbers", adapter_uri=uri, manifest_uri=uri + "manifest.json")
    text = summary.to_termination_message()
    assert len(text.encode("utf-8")) <= TERMINATION_MESSAGE_LIMIT_BYTES
    assert RunSummary.model_validate_json(text).status == RunStatus.SUCCEEDED
