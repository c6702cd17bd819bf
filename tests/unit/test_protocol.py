"""The trainer <-> operator wire contract (kubetune_api.protocol): pinned shapes, round trips, and
compatibility with a trainer one release older (no `version`, snake_case preflight report) or
newer (more fields, a higher version, reasons and phases this release does not know)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubetune_api.protocol import (
    FAILURES,
    PROTOCOL_VERSION,
    TERMINATION_MESSAGE_LIMIT_BYTES,
    CheckpointRecord,
    ErrorKind,
    EvalResult,
    Evaluations,
    FailureReason,
    GateResult,
    PreflightReport,
    ProgressReport,
    QualityCode,
    QualityWarning,
    RunStatus,
    RunSummary,
    TrainerPhase,
    WireModel,
    data_quality_failure,
    failure,
    failure_for_exit_code,
    parse_termination_message,
)
from protocol_samples import MEMORY, PLAN, PREFLIGHT, PREFLIGHT_WITH_FIT, PREFLIGHT_WITH_QUALITY, QUALITY, STATS

SUMMARY = RunSummary(
    status=RunStatus.SUCCEEDED,
    job="ft",
    step=120,
    total_steps=120,
    trained_tokens=118152,
    train_loss=3.33,
    eval=Evaluations(
        baseline=EvalResult(loss=5.83, perplexity=340.4, tokens=900, exact_match=0.0, samples=200),
        finetuned=EvalResult(loss=3.37, perplexity=29.1, tokens=900, exact_match=0.89, samples=200),
    ),
    adapter_uri="s3://out/run/",
    manifest_uri="s3://out/run/manifest.json",
    duration_seconds=91.5,
)
FAILED = RunSummary(
    status=RunStatus.FAILED,
    job="ft",
    reason=FailureReason.DATASET_INVALID,
    message="train.jsonl line 7: invalid JSON",
    exit_code=12,
    user_error=True,
)
PROGRESS = ProgressReport(
    phase=TrainerPhase.RUNNING,
    step=40,
    total_steps=100,
    epoch=1.2,
    train_loss=1.2345,
    baseline_eval_loss=2.5,
    learning_rate=2e-4,
    tokens_per_second=8123.4,
    trained_tokens=50000,
    eta_seconds=754.2,
    checkpoints=[CheckpointRecord(step=40, uri="s3://out/run/checkpoints/step-00000040/", time=1795000000.0)],
    last_update_time=1795000001.0,
)
MESSAGES: list[WireModel] = [PREFLIGHT, PREFLIGHT_WITH_FIT, PREFLIGHT_WITH_QUALITY, SUMMARY, FAILED, PROGRESS]


# -- pinned wire shapes --------------------------------------------------------------------------


def test_progress_wire_shape_is_pinned() -> None:
    assert PROGRESS.to_wire() == {
        "version": 1,
        "phase": "Running",
        "step": 40,
        "totalSteps": 100,
        "epoch": 1.2,
        "trainLoss": 1.2345,
        "baselineEvalLoss": 2.5,
        "learningRate": 2e-4,
        "tokensPerSecond": 8123.4,
        "trainedTokens": 50000,
        "etaSeconds": 754.2,
        "checkpoints": [{"step": 40, "uri": "s3://out/run/checkpoints/step-00000040/", "time": 1795000000.0}],
        "lastUpdateTime": 1795000001.0,
        "progressRatio": 0.4,
    }


def test_run_summary_termination_message_is_pinned() -> None:
    assert json.loads(SUMMARY.to_termination_message()) == {
        "version": 1,
        "status": "Succeeded",
        "job": "ft",
        "exitCode": 0,
        "step": 120,
        "totalSteps": 120,
        "trainedTokens": 118152,
        "trainLoss": 3.33,
        "eval": {
            "baseline": {"loss": 5.83, "perplexity": 340.4, "tokens": 900, "exactMatch": 0.0, "samples": 200},
            "finetuned": {"loss": 3.37, "perplexity": 29.1, "tokens": 900, "exactMatch": 0.89, "samples": 200},
        },
        "adapterUri": "s3://out/run/",
        "manifestUri": "s3://out/run/manifest.json",
        "durationSeconds": 91.5,
        "alreadyComplete": False,
    }
    assert json.loads(FAILED.to_termination_message()) == {
        "version": 1,
        "status": "Failed",
        "job": "ft",
        "reason": "DatasetInvalid",
        "message": "train.jsonl line 7: invalid JSON",
        "exitCode": 12,
        "userError": True,
        "step": 0,
        "totalSteps": 0,
        "trainedTokens": 0,
        "durationSeconds": 0.0,
        "alreadyComplete": False,
    }


def test_preflight_report_wire_shape_is_pinned() -> None:
    wire = PREFLIGHT.to_wire()
    assert list(wire) == ["version", "status", "job", "data", "plan", "memory", "model"]
    assert wire["model"] == {"modelType": "qwen3", "architecture": "Qwen3ForCausalLM"}
    assert wire["status"] == "Validated"
    assert wire["data"]["trainRows"] == 900 and wire["data"]["packingEfficiency"] == 0.97
    assert wire["plan"] == {
        "epochs": 3,
        "batchSize": 8,
        "gradientAccumulationSteps": 1,
        "stepsPerEpoch": 113,
        "totalSteps": 340,
        "warmupSteps": 10,
    }
    assert wire["memory"]["totalBytes"] == 30 * 2**30


# -- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message: WireModel) -> None:
    again = type(message).model_validate_json(message.to_wire_json())
    assert again == message
    assert again.to_wire() == message.to_wire()


@pytest.mark.parametrize("summary", [SUMMARY, FAILED], ids=["succeeded", "failed"])
def test_termination_messages_parse_back_to_their_type(summary: RunSummary) -> None:
    assert parse_termination_message(summary.to_termination_message()) == summary
    assert parse_termination_message(PREFLIGHT.to_wire_json()) == PREFLIGHT


@pytest.mark.parametrize("text", [None, "", "not json", "[1, 2]", '{"status": 3}', "Traceback (most recent call"])
def test_what_is_not_our_message_parses_to_none(text: str | None) -> None:
    """A log tail (FallbackToLogsOnError) or garbage is not a summary."""
    assert parse_termination_message(text) is None


def test_termination_message_stays_under_the_kubelet_limit_and_valid_json() -> None:
    long = RunSummary(status="Failed", job="ft", reason="DatasetInvalid", message="é" * 5000, exit_code=12)
    text = long.to_termination_message()
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT_BYTES
    parsed = parse_termination_message(text)
    assert isinstance(parsed, RunSummary) and parsed.reason == FailureReason.DATASET_INVALID
    assert parsed.message and parsed.message.endswith("…")
    huge_uri = SUMMARY.model_copy(update={"adapter_uri": "s3://b/" + "k" * 5000})
    assert len(huge_uri.to_termination_message().encode()) <= TERMINATION_MESSAGE_LIMIT_BYTES


def test_a_preflight_report_with_its_fit_plan_is_a_termination_message_with_room_to_spare() -> None:
    """The preflight report is written whole (never truncated): with the fit plan it must stay well
    under the kubelet's 4 KiB."""
    text = PREFLIGHT_WITH_FIT.to_wire_json()
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT_BYTES // 2
    assert parse_termination_message(text) == PREFLIGHT_WITH_FIT


# -- compatibility -------------------------------------------------------------------------------


def test_reads_the_previous_release() -> None:
    """Release 0.1.0 wrote no version; its preflight report was snake_case."""
    old_preflight: dict[str, Any] = {
        "status": "Validated",
        "job": "ft",
        "data": {**STATS.model_dump()},
        "plan": {**PLAN.model_dump()},
        "memory": {**MEMORY.model_dump()},
    }
    parsed = parse_termination_message(json.dumps(old_preflight))
    assert isinstance(parsed, PreflightReport)
    assert parsed.data == STATS and parsed.plan == PLAN and parsed.memory == MEMORY
    old_summary = '{"status":"Failed","job":"ft","reason":"GPUOOM","message":"m","exitCode":22,"userError":false}'
    summary = parse_termination_message(old_summary)
    assert isinstance(summary, RunSummary) and summary.reason is FailureReason.GPU_OOM and summary.exit_code == 22
    old_progress = {k: v for k, v in PROGRESS.to_wire().items() if k != "version"}
    assert ProgressReport.model_validate(old_progress) == PROGRESS


def test_reads_a_newer_release() -> None:
    """More fields and a higher version are fine; unknown reasons and phases stay strings."""
    newer = {**FAILED.to_wire(), "version": PROTOCOL_VERSION + 1, "reason": "FutureReason", "gpuHours": 3.5}
    summary = parse_termination_message(json.dumps(newer))
    assert isinstance(summary, RunSummary)
    assert summary.reason == "FutureReason" and not isinstance(summary.reason, FailureReason)
    assert summary.version == PROTOCOL_VERSION + 1
    progress = ProgressReport.model_validate({**PROGRESS.to_wire(), "phase": "Quantizing", "newField": [1]})
    assert progress.phase == "Quantizing" and progress.step == 40
    status = parse_termination_message(json.dumps({**SUMMARY.to_wire(), "status": "Paused"}))
    assert isinstance(status, RunSummary) and status.status == "Paused"


def test_known_values_stay_enums() -> None:
    assert RunSummary.model_validate_json(FAILED.to_wire_json()).reason is FailureReason.DATASET_INVALID
    assert ProgressReport.model_validate(PROGRESS.to_wire()).phase is TrainerPhase.RUNNING


# -- the failure table ---------------------------------------------------------------------------


def test_failure_table_is_consistent() -> None:
    assert set(FAILURES) == set(FailureReason), "every reason has one row"
    codes = [info.exit_code for info in FAILURES.values() if info.exit_code is not None]
    assert len(codes) == len(set(codes)), "exit codes are unique"
    for info in FAILURES.values():
        assert info.advice.endswith(".") and len(info.advice) < 120
        if info.exit_code is not None and info.exit_code < 128:
            ranges = {ErrorKind.USER: range(10, 20), ErrorKind.INFRASTRUCTURE: range(20, 30)}
            ranges[ErrorKind.UNSUPPORTED] = range(30, 40)
            assert info.exit_code in ranges[info.kind], info
        if info.kind in (ErrorKind.USER, ErrorKind.UNSUPPORTED):
            assert not info.retryable, f"{info.reason}: a retry cannot fix a {info.kind} error"


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (11, FailureReason.INVALID_SPEC),
        (12, FailureReason.DATASET_INVALID),
        (15, FailureReason.S3_ACCESS_DENIED),
        (21, FailureReason.STORAGE_ERROR),
        (22, FailureReason.GPU_OOM),
        (143, FailureReason.PREEMPTED),
        (137, FailureReason.KILLED),
        (17, FailureReason.USER_ERROR),  # a newer trainer's user error: judged by its range
        (27, FailureReason.INFRASTRUCTURE_ERROR),
        (30, FailureReason.UNSUPPORTED_MODEL),
        (35, FailureReason.UNSUPPORTED_MODEL),  # a newer trainer's limit: judged by its range
    ],
)
def test_exit_codes_map_to_reasons(code: int, reason: FailureReason) -> None:
    info = failure_for_exit_code(code)
    assert info is not None and info.reason is reason


def test_unknown_exit_codes_and_reasons() -> None:
    assert failure_for_exit_code(1) is None and failure_for_exit_code(139) is None
    assert failure("NoSuchReason") is None
    assert failure("GPUOOM") is FAILURES[FailureReason.GPU_OOM]


def test_a_summary_with_many_checkpoints_drops_the_oldest_before_anything_else() -> None:
    """Checkpoints ride in the termination message for runs too short to be polled; under the 4 KiB
    limit the latest one is the last thing to go, and the eval and URIs stay."""
    records = [
        CheckpointRecord(step=step, uri=f"s3://bucket/out/{'deep/' * 20}checkpoints/step-{step:08d}/", time=1.7e9)
        for step in range(10, 310, 10)
    ]
    summary = SUMMARY.model_copy(update={"checkpoints": records})
    text = summary.to_termination_message()
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT_BYTES
    parsed = parse_termination_message(text)
    assert isinstance(parsed, RunSummary)
    kept = [c.step for c in parsed.checkpoints]
    assert kept and kept == [c.step for c in records][-len(kept) :] and len(kept) < len(records)
    assert parsed.eval == SUMMARY.eval and parsed.adapter_uri == SUMMARY.adapter_uri


# -- the data-quality report ---------------------------------------------------------------------


def test_data_quality_wire_shape_is_pinned() -> None:
    wire = PREFLIGHT_WITH_QUALITY.to_wire()["quality"]
    assert wire["trainLengths"] == {"p50": 130, "p95": 900, "max": 1400}
    assert wire["truncatedShare"] == 0.08 and wire["leakedValidationRows"] == 2
    assert wire["rowsPerFormat"] == {"chat": 1000}
    assert wire["warnings"][0] == {
        "code": "TruncatedRows",
        "message": QUALITY.warnings[0].message,
        "field": "training.maxSeqLength",
        "example": "train.jsonl:17",
        "value": 0.08,
        "threshold": 0.05,
    }


def test_a_preflight_report_with_quality_and_fit_is_written_whole() -> None:
    text = PREFLIGHT_WITH_QUALITY.to_termination_message()
    assert json.loads(text) == PREFLIGHT_WITH_QUALITY.to_wire() and len(text.encode()) < TERMINATION_MESSAGE_LIMIT_BYTES
    assert parse_termination_message(text) == PREFLIGHT_WITH_QUALITY


def test_a_preflight_report_too_big_for_the_kubelet_shortens_warning_messages_and_keeps_every_code() -> None:
    """A cut report would not parse, and the operator would lose what failOnWarnings acts on."""
    many = [
        QualityWarning(code=code, message="x" * 2000, field="dataset.train", example="train.jsonl:1")
        for code in QualityCode
    ]
    big = PREFLIGHT_WITH_QUALITY.model_copy(update={"quality": QUALITY.model_copy(update={"warnings": many})})
    text = big.to_termination_message()
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT_BYTES
    parsed = parse_termination_message(text)
    assert isinstance(parsed, PreflightReport) and parsed.quality is not None
    assert [w.code for w in parsed.quality.warnings] == list(QualityCode)
    assert all(w.example == "train.jsonl:1" and len(w.message) <= 201 for w in parsed.quality.warnings)
    assert parsed.data == big.data and parsed.plan == big.plan


def test_a_newer_trainers_quality_code_stays_a_string_and_an_older_report_has_no_quality() -> None:
    wire = PREFLIGHT_WITH_QUALITY.to_wire()
    wire["quality"]["warnings"][0]["code"] = "SomethingNew"
    wire["quality"]["newField"] = 1
    parsed = parse_termination_message(json.dumps(wire))
    assert isinstance(parsed, PreflightReport) and parsed.quality is not None
    assert parsed.quality.warnings[0].code == "SomethingNew"
    assert parsed.quality.warnings[1].code is QualityCode.VALIDATION_LEAKAGE
    older = parse_termination_message(PREFLIGHT_WITH_FIT.to_wire_json())
    assert isinstance(older, PreflightReport) and older.quality is None


def test_data_quality_failed_is_a_user_error_never_retried_with_its_own_exit_code() -> None:
    info = failure_for_exit_code(16)
    assert info is not None and info.reason is FailureReason.DATA_QUALITY_FAILED
    assert info.user_error and not info.retryable and "preflight.failOnWarnings: false" in info.advice
    assert data_quality_failure([("TruncatedRows", "cut"), ("DroppedRows", "gone")]) == (
        "preflight.failOnWarnings is true and the data-quality report has 2 warning(s): TruncatedRows: cut; "
        "DroppedRows: gone"
    )


def test_the_gate_verdict_is_the_last_thing_a_trimmed_termination_message_drops() -> None:
    """eval goes before the gate: the operator needs the verdict for EvaluationPassed, and could only judge
    again from eval."""
    gate = GateResult(passed=False, metric="evalLoss", value=3.4, threshold=1.0, reason="ThresholdNotMet", message="m")
    crowded = SUMMARY.model_copy(update={"gate": gate, "adapter_uri": "s3://b/" + "k" * 3900})
    parsed = parse_termination_message(crowded.to_termination_message())
    assert isinstance(parsed, RunSummary) and parsed.gate == gate
    assert parsed.eval is None and parsed.adapter_uri is None
