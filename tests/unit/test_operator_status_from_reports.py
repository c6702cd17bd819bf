"""The trainer's reports copied into the status (status_from_reports): phases, checkpoints, summary."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from kubetune_api.gate import judge_gate
from kubetune_api.protocol import (
    CheckpointRecord,
    EvalResult,
    Evaluations,
    GateResult,
    ProgressReport,
    RunStatus,
    RunSummary,
    TrainerPhase,
)
from kubetune_api.spec import EvaluationSpec, FineTuneJobSpec
from kubetune_api.status import (
    ArtifactsStatus,
    CheckpointStatus,
    DataQualityStatus,
    EvaluationStatus,
    FineTuneJobStatus,
    GateOutcome,
    MetricsStatus,
    Phase,
    PreflightWarning,
    ProgressStatus,
)
from kubetune_operator.status_from_reports import (
    apply_progress,
    apply_summary,
    evaluation_status,
    gate_result,
    job_phase,
    merge_checkpoints,
    preflight_status,
    serving_status,
)
from protocol_samples import PREFLIGHT, PREFLIGHT_WITH_QUALITY, QUALITY

T0 = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
SPEC = FineTuneJobSpec.model_validate(
    {
        "baseModel": {"uri": "s3://models/llama/"},
        "dataset": {"train": "s3://data/train.jsonl"},
        "output": {"uri": "s3://artifacts/run/"},
    }
)


def report(phase: str, step: int = 0, **fields: Any) -> ProgressReport:
    return ProgressReport.model_validate({"phase": phase, "step": step, "totalSteps": 100, **fields})


# -- job_phase -----------------------------------------------------------------------------------


JOB_PHASES = [
    (TrainerPhase.INITIALIZING, 0, Phase.INITIALIZING),
    (TrainerPhase.STAGING, 0, Phase.INITIALIZING),
    (TrainerPhase.PREPARING, 0, Phase.INITIALIZING),
    (TrainerPhase.LOADING, 0, Phase.INITIALIZING),
    (TrainerPhase.EVALUATING, 0, Phase.INITIALIZING),  # the baseline eval, before any step
    (TrainerPhase.EVALUATING, 100, Phase.RUNNING),  # the final eval, after training
    (TrainerPhase.RUNNING, 40, Phase.RUNNING),
    (TrainerPhase.CHECKPOINTING, 40, Phase.RUNNING),
    (TrainerPhase.EXPORTING, 100, Phase.EXPORTING),
    (TrainerPhase.DONE, 100, Phase.EXPORTING),
]


@pytest.mark.parametrize(("trainer_phase", "step", "phase"), JOB_PHASES, ids=[f"{p}-{s}" for p, s, _ in JOB_PHASES])
def test_job_phase_of_every_trainer_phase(trainer_phase: TrainerPhase, step: int, phase: Phase) -> None:
    progress = report(str(trainer_phase), step)
    assert progress.phase is trainer_phase  # a known phase is read as the enum
    assert job_phase(progress) is phase


def test_every_trainer_phase_has_a_job_phase() -> None:
    assert {p for p, _, _ in JOB_PHASES} == set(TrainerPhase)


def test_a_newer_trainers_unknown_phase_counts_as_running() -> None:
    progress = report("Quantizing", 10)
    assert progress.phase == "Quantizing" and not isinstance(progress.phase, TrainerPhase)
    assert job_phase(progress) is Phase.RUNNING
    assert job_phase(report("Quantizing", 0)) is Phase.RUNNING


# -- merge_checkpoints ---------------------------------------------------------------------------


def test_merge_checkpoints_unions_by_step_oldest_first() -> None:
    known = [CheckpointStatus(step=10, uri="s3://a/ck-10/", time=T0), CheckpointStatus(step=30, uri="s3://a/ck-30/")]
    reported = [
        CheckpointRecord(step=40, uri="s3://a/ck-40/", time=1795000000.0),
        CheckpointRecord(step=20, uri="s3://a/ck-20/", time=0.0),
    ]
    merged = merge_checkpoints(known, reported)
    assert [c.step for c in merged] == [10, 20, 30, 40]
    assert merged[0] == known[0] and merged[2] == known[1]  # a retry's trainer reports only its own
    assert merged[1] == CheckpointStatus(step=20, uri="s3://a/ck-20/", time=datetime(1970, 1, 1, tzinfo=UTC))
    assert merged[3].time == datetime.fromtimestamp(1795000000.0, UTC)
    assert [c.step for c in known] == [10, 30]  # pure: the input is not changed


def test_merge_checkpoints_prefers_the_report_for_the_same_step() -> None:
    known = [CheckpointStatus(step=10, uri="s3://a/old/", time=T0)]
    merged = merge_checkpoints(known, [CheckpointRecord(step=10, uri="s3://a/new/", time=0.0)])
    assert merged == [CheckpointStatus(step=10, uri="s3://a/new/", time=datetime(1970, 1, 1, tzinfo=UTC))]


def test_merge_checkpoints_of_nothing() -> None:
    assert merge_checkpoints([], []) == []
    known = [CheckpointStatus(step=10, uri="s3://a/ck/")]
    assert merge_checkpoints(known, []) == known


def test_apply_progress_keeps_the_latest_checkpoints_only() -> None:
    status = FineTuneJobStatus(checkpoints=[CheckpointStatus(step=s, uri=f"s3://a/{s}/") for s in (10, 20)])
    records = [{"step": s, "uri": f"s3://a/{s}/", "time": 0.0} for s in (30, 40)]
    apply_progress(status, report("Running", 40, checkpoints=records), max_checkpoints=3)
    assert [c.step for c in status.checkpoints] == [20, 30, 40]


# -- apply_summary -------------------------------------------------------------------------------


def running_status() -> FineTuneJobStatus:
    """What the last /progress poll left in the status."""
    return FineTuneJobStatus(
        phase=Phase.RUNNING,
        progress=ProgressStatus(percent="97%", step=97, total_steps=100, eta_seconds=30, eta="30s", epoch=2.9),
        metrics=MetricsStatus(train_loss=0.61, learning_rate=0.00001),
        trained_tokens=97_000,
    )


def test_apply_summary_records_artifacts_losses_and_100_percent() -> None:
    status = running_status()
    summary = RunSummary(
        status=RunStatus.SUCCEEDED,
        job="ft",
        step=100,
        total_steps=100,
        trained_tokens=100_000,
        train_loss=0.512345,
        eval=Evaluations(baseline=EvalResult(loss=2.512345), finetuned=EvalResult(loss=0.912345)),
        adapter_uri="s3://artifacts/run/adapter/",
        manifest_uri="s3://artifacts/run/manifest.json",
    )
    apply_summary(status, summary, SPEC, max_checkpoints=10)
    assert status.artifacts == ArtifactsStatus(
        output_uri="s3://artifacts/run/",
        adapter_uri="s3://artifacts/run/adapter/",
        manifest_uri="s3://artifacts/run/manifest.json",
        serving=serving_status("ft", SPEC, "s3://artifacts/run/adapter/"),
    )
    assert status.metrics == MetricsStatus(
        train_loss=0.5123, eval_loss=0.9123, baseline_eval_loss=2.5123, learning_rate=0.00001
    )
    assert status.progress == ProgressStatus(
        percent="100%", step=100, total_steps=100, eta_seconds=0, eta="0s", epoch=2.9
    )
    assert status.trained_tokens == 100_000


def test_apply_summary_adds_checkpoints_that_no_poll_saw() -> None:
    """A run shorter than the poll interval: its checkpoints arrive only in the termination message."""

    def record(step: int) -> CheckpointRecord:
        return CheckpointRecord(step=step, uri=f"s3://artifacts/run/checkpoints/step-{step:08d}/", time=1.7e9)

    status = running_status()
    status.checkpoints = merge_checkpoints([], [record(90)])  # the one a poll saw
    summary = RunSummary(status=RunStatus.SUCCEEDED, step=100, total_steps=100, checkpoints=[record(98), record(100)])
    apply_summary(status, summary, SPEC, max_checkpoints=10)
    assert [c.step for c in status.checkpoints] == [90, 98, 100]
    apply_summary(status, summary, SPEC, max_checkpoints=1)
    assert [c.step for c in status.checkpoints] == [100]


def test_apply_summary_without_a_summary_still_completes_the_status() -> None:
    """A pod that left no summary (an older image, or a truncated message): the output URI is known."""
    status = running_status()
    apply_summary(status, None, SPEC, max_checkpoints=10)
    assert status.artifacts == ArtifactsStatus(output_uri="s3://artifacts/run/")
    assert status.metrics == running_status().metrics  # nothing new to report
    assert status.progress == ProgressStatus(
        percent="100%", step=97, total_steps=100, eta_seconds=0, eta="0s", epoch=2.9
    )
    assert status.trained_tokens == 97_000


def test_apply_summary_on_an_empty_status() -> None:
    status = FineTuneJobStatus()
    apply_summary(status, None, SPEC, max_checkpoints=10)
    assert status.progress == ProgressStatus(percent="100%", eta_seconds=0, eta="0s")
    assert status.metrics == MetricsStatus()
    assert status.to_wire() == {
        "artifacts": {"outputUri": "s3://artifacts/run/"},
        "progress": {"percent": "100%", "etaSeconds": 0, "eta": "0s"},
        "metrics": {},
    }


# -- preflight_status: the data-quality report ---------------------------------------------------


def test_preflight_status_carries_the_quality_numbers_and_every_warning() -> None:
    out = preflight_status(PREFLIGHT_WITH_QUALITY, SPEC, gpu_memory_gib=80)
    assert out.quality == DataQualityStatus(
        p50_row_tokens=130,
        p95_row_tokens=900,
        max_row_tokens=1400,
        truncated_share=0.08,
        duplicate_rows=3,
        near_duplicate_rows=4,
        leaked_validation_rows=2,
        empty_answers=0,
        rows_per_format={"chat": 1000},
    )
    assert out.warnings == [
        PreflightWarning(
            code="TruncatedRows",
            message=QUALITY.warnings[0].message,
            field="training.maxSeqLength",
            example="train.jsonl:17",
        ),
        PreflightWarning(
            code="ValidationLeakage",
            message=QUALITY.warnings[1].message,
            field="dataset.validation",
            example="val.jsonl:4",
        ),
    ]
    wire = out.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert wire["quality"]["p95RowTokens"] == 900 and wire["warnings"][0]["code"] == "TruncatedRows"


def test_preflight_status_of_a_report_without_quality_has_none_and_a_long_message_is_bounded() -> None:
    assert preflight_status(PREFLIGHT, SPEC, gpu_memory_gib=80).quality is None
    long = QUALITY.model_copy(
        update={"warnings": [QUALITY.warnings[0].model_copy(update={"message": "m" * 5000, "code": "SomethingNew"})]}
    )
    out = preflight_status(PREFLIGHT.model_copy(update={"quality": long}), SPEC, gpu_memory_gib=80)
    assert out.warnings is not None and len(out.warnings[0].message) == 1024 and out.warnings[0].code == "SomethingNew"


# -- status.evaluation ---------------------------------------------------------------------------

GATED = SPEC.model_copy(
    update={"evaluation": EvaluationSpec.model_validate({"gate": {"metric": "evalLoss", "threshold": 1.0}})}
)
EVALS = Evaluations(
    baseline=EvalResult(loss=2.512345, perplexity=12.3, scores={"numeric": 0.1}, metric="numeric", samples=50),
    finetuned=EvalResult(loss=0.912345, perplexity=2.49, scores={"numeric": 0.8}, metric="numeric", samples=50),
)


def test_evaluation_status_without_a_gate_has_the_numbers_and_no_verdict() -> None:
    evaluation = evaluation_status(RunSummary(status=RunStatus.SUCCEEDED, eval=EVALS), SPEC)
    assert evaluation == EvaluationStatus(
        eval_loss=0.9123,
        baseline_eval_loss=2.5123,
        perplexity=2.49,
        baseline_perplexity=12.3,
        generation_metric="numeric",
        score=0.8,
        baseline_score=0.1,
        samples=50,
    )


def test_evaluation_status_copies_the_trainers_verdict() -> None:
    verdict = GateResult(
        passed=False, metric="evalLoss", value=0.912345, threshold=0.5, baseline=2.512345, reason="ThresholdNotMet",
        message="evalLoss 0.9123 is above the maximum 0.5",
    )  # fmt: skip
    evaluation = evaluation_status(RunSummary(status=RunStatus.SUCCEEDED, eval=EVALS, gate=verdict), GATED)
    assert evaluation is not None and evaluation.result == GateOutcome.FAILED
    assert (evaluation.metric, evaluation.value, evaluation.threshold, evaluation.baseline) == (
        "evalLoss", 0.9123, 0.5, 2.5123
    )  # fmt: skip
    assert evaluation.reason == "ThresholdNotMet" and evaluation.message == "evalLoss 0.9123 is above the maximum 0.5"
    assert evaluation.model_dump(mode="json", by_alias=True)["result"] == "Failed"


def test_without_the_trainers_verdict_the_operator_judges_the_evaluations_itself() -> None:
    """An older trainer, or a summary trimmed of its gate: the same judge_gate, from the same numbers."""
    summary = RunSummary(status=RunStatus.SUCCEEDED, eval=EVALS)
    assert gate_result(summary, GATED) == judge_gate(GATED.evaluation.gate, EVALS)  # type: ignore[arg-type]
    evaluation = evaluation_status(summary, GATED)
    assert evaluation is not None and evaluation.result == GateOutcome.PASSED and evaluation.reason == "ThresholdMet"


def test_no_gate_and_nothing_evaluated_leaves_status_evaluation_unset() -> None:
    assert evaluation_status(RunSummary(status=RunStatus.SUCCEEDED), SPEC) is None
    assert gate_result(RunSummary(status=RunStatus.SUCCEEDED), GATED) is None  # nothing to judge


def test_apply_summary_fills_status_evaluation() -> None:
    status = running_status()
    apply_summary(status, RunSummary(status=RunStatus.SUCCEEDED, eval=EVALS), GATED, max_checkpoints=10)
    assert status.evaluation is not None and status.evaluation.result == GateOutcome.PASSED
    assert status.to_wire()["evaluation"]["result"] == "Passed"


# -- serving_status ------------------------------------------------------------------------------


def spec_with(**changes: Any) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate({**SPEC.model_dump(by_alias=True, exclude_none=True), **changes})


def test_serving_status_gives_vllm_and_kserve_snippets_for_the_published_adapter() -> None:
    serving = serving_status("support-bot", SPEC, "s3://artifacts/run/")
    assert serving.vllm_problems == [] and serving.merged_vllm_command is None
    assert serving.vllm_command is not None and serving.vllm_command.splitlines() == [
        "aws s3 sync s3://models/llama/ ./base-model",
        "aws s3 sync s3://artifacts/run/ ./adapters/support-bot --exclude 'checkpoints/*' --exclude 'merged/*'",
        "vllm serve ./base-model --enable-lora --max-lora-rank 16 --lora-modules support-bot=./adapters/support-bot",
    ]
    isvc = yaml.safe_load(serving.kserve_inference_service or "")
    assert isvc["metadata"]["name"] == "support-bot"
    assert [u["uri"] for u in isvc["spec"]["predictor"]["model"]["storageUris"]] == [
        "s3://models/llama/",
        "s3://artifacts/run/",
    ]
    # the whole serving block stays small next to the status object's other fields
    assert len(serving.model_dump_json(by_alias=True)) < 2000


def test_serving_status_of_a_dora_job_names_the_problem_and_serves_the_merged_weights() -> None:
    spec = spec_with(lora={"r": 64, "useDora": True}, output={"uri": "s3://artifacts/run/", "mergeAdapter": True})
    serving = serving_status("ft", spec, "s3://artifacts/run/")
    assert serving.vllm_command is None and serving.kserve_inference_service is None
    assert len(serving.vllm_problems) == 1 and serving.vllm_problems[0].startswith("use_dora: vLLM does not load DoRA")
    assert serving.merged_vllm_command == (
        "aws s3 sync s3://artifacts/run/merged/ ./models/ft\nvllm serve ./models/ft --served-model-name ft"
    )


def test_serving_status_uses_the_storage_endpoint_and_the_rank() -> None:
    spec = spec_with(lora={"r": 200}, storage={"endpoint": "http://minio.storage:9000"})
    serving = serving_status("ft", spec, "s3://artifacts/run/")
    assert serving.vllm_command is not None
    assert serving.vllm_command.count("--endpoint-url http://minio.storage:9000") == 2
    assert "--max-lora-rank 256" in serving.vllm_command


def test_apply_summary_gives_no_snippets_without_a_published_adapter() -> None:
    status = running_status()
    apply_summary(status, RunSummary(status=RunStatus.SUCCEEDED, step=1, total_steps=1), SPEC, max_checkpoints=10)
    assert status.artifacts is not None and status.artifacts.serving is None
