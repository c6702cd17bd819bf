"""The pure state machine: observed FineTuneJob + children -> decision (status, creations, Events)."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubetune_api.protocol import (
    CheckpointRecord,
    ProgressReport,
)
from kubetune_api.status import (
    ArtifactsStatus,
    CheckpointStatus,
    Condition,
    ConditionType,
    ErrorStatus,
    FineTuneJobStatus,
    MemoryFit,
    MetricsStatus,
    ModelStatus,
    Phase,
    PreflightStatus,
    ProgressStatus,
    rfc3339,
)
from kubetune_operator.conditions import set_condition
from kubetune_operator.decide import Decision, Snapshot, decide
from kubetune_operator.manifests import Owner, labels, preflight_job_name, trainer_job_name
from kubetune_operator.patching import merge_patch
from kubetune_operator.settings import OperatorSettings
from kubetune_operator.status_from_reports import merge_checkpoints, serving_status
from kubetune_operator.views import JobView, PodView, job_view, pod_view, progress_url
from protocol_samples import FIT, PREFLIGHT, PREFLIGHT_WITH_FIT, QUALITY

OWNER = Owner(name="ft", namespace="team", uid="uid-1")
SETTINGS = OperatorSettings(poll_interval_seconds=5, gpu_memory_gib=80)
NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
JSON = dict[str, Any]


def spec(**overrides: Any) -> JSON:
    base: JSON = {
        "baseModel": {"uri": "s3://models/llama/"},
        "dataset": {"train": "s3://data/train.jsonl"},
        "output": {"uri": "s3://artifacts/run/"},
        "resources": {"gpus": 1},
    }
    return base | overrides


def child(component: str, attempt: int | None) -> tuple[str, dict[str, str]]:
    """A child's name and labels, as the operator's own builders make them."""
    name = trainer_job_name("ft", attempt) if component == "trainer" and attempt else preflight_job_name("ft")
    return name, labels(OWNER, component, attempt)


def kjob(
    component: str = "trainer",
    attempt: int | None = 1,
    suspended: bool = False,
    condition: tuple[str, str] | None = None,
    active: int = 0,
) -> JobView:
    name, labels = child(component, attempt)
    status: JSON = {"active": active}
    if condition:
        status["conditions"] = [{"type": condition[0], "status": "True", "reason": condition[1], "message": "m"}]
    return job_view({"metadata": {"name": name, "labels": labels}, "spec": {"suspend": suspended}, "status": status})


def kpod(
    component: str = "trainer",
    attempt: int | None = 1,
    phase: str = "Running",
    exit_code: int | None = None,
    message: str | None = None,
    terminated_reason: str | None = None,
    waiting: str | None = None,
    unschedulable: str | None = None,
    created: str = "2026-11-23T11:00:00Z",
    started: str | None = "2026-11-23T11:00:10Z",
    index: int = 0,
) -> PodView:
    job_name, labels = child(component, attempt)
    labels["job-name"] = job_name
    labels["batch.kubernetes.io/job-completion-index"] = str(index)
    state: JSON = {}
    if exit_code is not None:
        state["terminated"] = {
            "exitCode": exit_code,
            "reason": terminated_reason or ("Completed" if exit_code == 0 else "Error"),
            "message": message,
            "startedAt": started,
            "finishedAt": "2026-11-23T11:30:10Z",
        }
    elif waiting:
        state["waiting"] = {"reason": waiting, "message": message}
    elif phase == "Running":
        state["running"] = {"startedAt": started}
    conditions = []
    if unschedulable:
        conditions.append(
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": unschedulable}
        )
    return pod_view(
        {
            "metadata": {"name": f"{job_name}-{index}-abcde", "labels": labels, "creationTimestamp": created},
            "spec": {"containers": [{"name": "trainer", "ports": [{"name": "metrics", "containerPort": 9090}]}]},
            "status": {
                "phase": phase,
                "podIP": "10.0.0.7" if phase != "Pending" else None,
                "conditions": conditions,
                "containerStatuses": [{"state": state}] if state else [],
            },
        }
    )


def snap(
    raw_spec: JSON | None = None,
    status: FineTuneJobStatus | None = None,
    jobs: tuple[JobView, ...] = (),
    pods: tuple[PodView, ...] = (),
    progress: ProgressReport | None = None,
    now: datetime = NOW,
    generation: int = 1,
) -> Snapshot:
    return Snapshot(
        name="ft",
        namespace="team",
        generation=generation,
        spec=spec() if raw_spec is None else raw_spec,
        status=FineTuneJobStatus() if status is None else status,
        jobs=jobs,
        pods=pods,
        progress=progress,
        now=now,
    )


def conditions(plan: Decision) -> dict[str, Condition]:
    return {c.type: c for c in plan.status.conditions}


def reasons(plan: Decision) -> list[str]:
    return [e.reason for e in plan.events]


def accepted(raw_spec: JSON | None = None, **status: Any) -> FineTuneJobStatus:
    """The status after admission (and, by default, a passed preflight); `status` sets typed fields."""
    plan = decide(snap(raw_spec), SETTINGS)
    out = plan.status
    validated = set_condition(out.conditions, ConditionType.DATA_VALIDATED, True, "Validated", "ok", 1, NOW)
    return out.model_copy(update={"conditions": validated, **status})


PREFLIGHT_REPORT = PREFLIGHT.to_wire_json()


# -- admission -----------------------------------------------------------------------------------


def test_invalid_spec_fails_with_every_field_named_and_creates_nothing() -> None:
    plan = decide(snap(spec(lora={"r": 0}, training={"learningRate": -1})), SETTINGS)
    assert plan.status.phase == Phase.FAILED and plan.status.error is not None
    assert plan.status.error.reason == "InvalidSpec"
    message = conditions(plan)["SpecValid"].message
    assert "spec.lora.r" in message and "spec.training.learningRate" in message
    assert conditions(plan)["SpecValid"].status == "False"
    assert not plan.create_preflight and plan.create_attempt is None
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "InvalidSpec")]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"dataset": {"train": "data/train.jsonl"}}, "spec.dataset.train"),
        ({"baseModel": {"uri": "file:///models/llama"}}, "spec.baseModel.uri"),
        ({"resources": {"gpus": 0}, "training": {"precision": "fp16"}}, "spec.training.precision"),
        ({"unknownField": 1}, "spec.unknownField"),
        (
            {"training": {"sharding": "fsdp"}, "lora": {"quantization": "4bit"}},
            "spec.training.sharding: fsdp cannot shard a quantised base (lora.quantization: 4bit)",
        ),
        (
            {"resources": {"gpus": 16, "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}}},
            "spec.resources.gpus: 16 GPUs per node, but nodes with H100-80GB (resources.nodeSelector) have at most 8",
        ),
    ],
)
def test_cluster_rules_reject_what_cannot_run_in_a_pod(overrides: JSON, field: str) -> None:
    plan = decide(snap(spec(**overrides)), SETTINGS)
    assert plan.status.phase == Phase.FAILED and plan.status.error is not None
    assert field in plan.status.error.message


def test_cpu_nodes_are_accepted_and_the_world_is_one_rank_per_node() -> None:
    """gpus: 0 with nodes: 2 trains with gloo, one process per pod (the CI's multi-node e2e)."""
    raw = spec(resources={"gpus": 0, "nodes": 2})
    plan = decide(snap(raw), SETTINGS)
    assert plan.status.error is None and plan.status.accepted_spec is not None
    assert plan.create_preflight


def test_valid_spec_is_accepted_then_preflight_starts_without_a_gpu_job() -> None:
    plan = decide(snap(), SETTINGS)
    assert plan.status.accepted_spec is not None
    assert plan.status.accepted_spec.base_model.uri == "s3://models/llama/"
    assert plan.status.accepted_spec.lora.r == 16
    assert plan.status.to_wire()["acceptedSpec"]["lora"]["r"] == 16  # defaults made explicit
    assert plan.create_preflight and plan.create_attempt is None
    assert plan.status.phase == Phase.VALIDATING
    assert conditions(plan)["SpecValid"].status == "True"
    assert conditions(plan)["DataValidated"].status == "False"
    assert plan.status.observed_generation == 1


# -- preflight -----------------------------------------------------------------------------------


def test_preflight_running_waits() -> None:
    status = decide(snap(), SETTINGS).status
    plan = decide(snap(status=status, jobs=(kjob("preflight", None),), pods=(kpod("preflight", None),)), SETTINGS)
    assert plan.status.phase == Phase.VALIDATING
    assert not plan.create_preflight and plan.create_attempt is None and not plan.events


def test_passed_preflight_records_the_numbers_and_starts_attempt_one() -> None:
    status = decide(snap(), SETTINGS).status
    done = kpod("preflight", None, phase="Succeeded", exit_code=0, message=PREFLIGHT_REPORT)
    plan = decide(
        snap(status=status, jobs=(kjob("preflight", None, condition=("Complete", "")),), pods=(done,)), SETTINGS
    )
    assert plan.status.preflight == PreflightStatus(
        format="chat",
        train_rows=900,
        validation_rows=100,
        train_tokens=123456,
        trainable_tokens=60000,
        truncated_rows=2,
        dropped_rows=0,
        packing_efficiency=0.97,
        epochs=3,
        batch_size=8,
        estimated_steps=340,
        estimated_gpu_memory_bytes=30 * 2**30,
        memory_fit=MemoryFit.FITS,
    )
    assert conditions(plan)["DataValidated"].status == "True"
    assert plan.status.model == ModelStatus(model_type="qwen3", architecture="Qwen3ForCausalLM")
    assert plan.create_attempt == 1 and plan.status.attempts == 1
    assert plan.attempt_deadline_seconds == 86_400
    assert plan.status.phase == Phase.INITIALIZING
    assert "DataValidated" in reasons(plan)


def test_memory_estimate_above_the_gpu_warns_but_does_not_fail() -> None:
    assert PREFLIGHT.memory is not None
    report = PREFLIGHT.model_copy(update={"memory": PREFLIGHT.memory.model_copy(update={"total_bytes": 200 * 2**30})})
    status = decide(snap(), SETTINGS).status
    done = kpod("preflight", None, phase="Succeeded", exit_code=0, message=report.to_wire_json())
    plan = decide(snap(status=status, jobs=(kjob("preflight", None),), pods=(done,)), SETTINGS)
    assert plan.status.preflight is not None and plan.status.preflight.memory_fit == MemoryFit.MAY_NOT_FIT
    assert "MemoryMayNotFit" in reasons(plan) and plan.create_attempt == 1


def finish_preflight(report: Any, raw_spec: JSON | None = None, settings: OperatorSettings = SETTINGS) -> Decision:
    status = decide(snap(raw_spec), settings).status
    done = kpod("preflight", None, phase="Succeeded", exit_code=0, message=report.to_wire_json())
    return decide(snap(raw_spec, status=status, jobs=(kjob("preflight", None),), pods=(done,)), settings)


def test_a_job_that_will_not_fit_fails_before_any_gpu_job_with_the_cheapest_change_named() -> None:
    plan = finish_preflight(PREFLIGHT_WITH_FIT)
    assert plan.status.phase == Phase.FAILED and plan.create_attempt is None
    assert plan.status.error is not None and plan.status.error.reason == "WillNotFit"
    message = plan.status.error.message
    assert "lora does not fit on H100-80GB: 141.0 GiB per GPU" in message
    assert "lora.quantization: 4bit; training.gradientCheckpointing: true; training.batchSize: 2" in message
    assert "preflight.enforceFit: false" in message
    fit = plan.status.preflight.fit if plan.status.preflight else None
    assert fit is not None and fit.fits is False and fit.gpu_hours == 0.41 and fit.suggestion
    assert conditions(plan)[ConditionType.DATA_VALIDATED].status == "True", "the data passed; the hardware did not"


def test_enforce_fit_false_tries_anyway_with_a_warning_and_the_cost() -> None:
    settings = OperatorSettings(poll_interval_seconds=5, gpu_prices={"NVIDIA-H100-80GB-HBM3": 3.0}, currency="EUR")
    plan = finish_preflight(PREFLIGHT_WITH_FIT, spec(preflight={"enforceFit": False}), settings)
    assert plan.create_attempt == 1
    assert plan.status.preflight is not None and plan.status.preflight.memory_fit == MemoryFit.MAY_NOT_FIT
    fit = plan.status.preflight.fit
    assert fit is not None and (fit.estimated_cost, fit.currency) == (1.23, "EUR")
    events = {e.reason: e for e in plan.events}
    assert "about 1.23 EUR" in events["FitPlanned"].message
    assert "exceeds H100-80GB's memory; cheapest change that fits: lora.quantization: 4bit" in (
        events["MemoryMayNotFit"].message
    )
    assert "CostUnknown" not in events


def test_a_gpu_type_without_a_price_warns_that_the_cost_is_unknown() -> None:
    fits = FIT.model_copy(update={"fits": True, "suggestion": None})
    plan = finish_preflight(PREFLIGHT.model_copy(update={"fit": fits}))
    assert plan.create_attempt == 1
    fit = plan.status.preflight.fit if plan.status.preflight else None
    assert fit is not None and fit.estimated_cost is None and fit.gpu_hours == 0.41
    events = {e.reason: e.message for e in plan.events}
    assert "no price for H100-80GB (chart value operator.gpuPrices)" in events["CostUnknown"]


def test_an_unknown_gpu_type_gives_no_verdict_and_warns() -> None:
    unknown = FIT.model_copy(
        update={"gpu_type": None, "gpu_memory_bytes": None, "fits": None, "suggestion": None, "wall_hours": None}
    )
    unknown = unknown.model_copy(update={"job": unknown.job.model_copy(update={"gpu_hours": None})})
    plan = finish_preflight(PREFLIGHT.model_copy(update={"fit": unknown}))
    assert plan.create_attempt == 1
    events = {e.reason: e.message for e in plan.events}
    assert "names no GPU type kubetune knows" in events["CostUnknown"]
    assert "on an unknown GPU type (no verdict)" in events["FitPlanned"]


WITH_WARNINGS = PREFLIGHT.model_copy(update={"quality": QUALITY})


def test_data_quality_warnings_fill_status_and_post_one_warning_event_each_then_training_starts() -> None:
    plan = finish_preflight(WITH_WARNINGS)
    assert plan.create_attempt == 1 and plan.status.phase != Phase.FAILED
    preflight = plan.status.preflight
    assert preflight is not None and preflight.quality is not None and preflight.quality.p95_row_tokens == 900
    assert [w.code for w in preflight.warnings or []] == ["TruncatedRows", "ValidationLeakage"]
    quality_events = [e for e in plan.events if e.reason == "DataQualityWarning"]
    assert [e.type for e in quality_events] == ["Warning", "Warning"]
    # The example row is added when the message does not name it already.
    assert quality_events[0].message == f"TruncatedRows: {QUALITY.warnings[0].message} (train.jsonl:17)"
    assert quality_events[1].message == f"ValidationLeakage: {QUALITY.warnings[1].message}"
    assert conditions(plan)[ConditionType.DATA_VALIDATED].status == "True"


def test_a_clean_report_posts_no_quality_event_even_with_fail_on_warnings() -> None:
    clean = PREFLIGHT.model_copy(update={"quality": QUALITY.model_copy(update={"warnings": []})})
    plan = finish_preflight(clean, spec(preflight={"failOnWarnings": True}))
    assert plan.create_attempt == 1 and "DataQualityWarning" not in reasons(plan)
    assert plan.status.preflight is not None and plan.status.preflight.warnings == []


def test_fail_on_warnings_fails_before_any_gpu_job_listing_every_warning() -> None:
    plan = finish_preflight(WITH_WARNINGS, spec(preflight={"failOnWarnings": True}))
    assert plan.status.phase == Phase.FAILED and plan.create_attempt is None
    error = plan.status.error
    assert error is not None and error.reason == "DataQualityFailed" and error.exit_code is None
    assert error.message.startswith(
        "preflight.failOnWarnings is true and the data-quality report has 2 warning(s): TruncatedRows: 80 of 1000 rows"
    )
    assert "; ValidationLeakage: 2 validation rows are also in training" in error.message
    validated = conditions(plan)[ConditionType.DATA_VALIDATED]
    assert (validated.status, validated.reason) == ("False", "DataQualityFailed")
    assert reasons(plan).count("DataQualityWarning") == 2 and "DataQualityFailed" in reasons(plan)
    assert "DataValidated" not in reasons(plan)
    assert plan.status.preflight is not None and plan.status.preflight.warnings, "the report stays readable"


def test_fail_on_warnings_without_a_quality_report_fails_closed() -> None:
    """An older trainer image writes no quality report: the gate cannot say the data is clean."""
    plan = finish_preflight(PREFLIGHT, spec(preflight={"failOnWarnings": True}))
    assert plan.status.phase == Phase.FAILED and plan.create_attempt is None
    assert plan.status.error is not None and plan.status.error.reason == "DataQualityFailed"
    assert "the preflight left no data-quality report (a trainer image older than the operator?)" in (
        plan.status.error.message
    )
    assert finish_preflight(PREFLIGHT).create_attempt == 1, "without failOnWarnings it is no reason to stop"


def test_bad_dataset_fails_in_preflight_and_no_gpu_job_is_created() -> None:
    status = decide(snap(), SETTINGS).status
    failure = json.dumps(
        {"status": "Failed", "job": "ft", "reason": "DatasetInvalid", "message": "train.jsonl line 7: bad JSON"}
    )
    bad = kpod("preflight", None, phase="Failed", exit_code=12, message=failure)
    plan = decide(snap(status=status, jobs=(kjob("preflight", None),), pods=(bad,)), SETTINGS)
    assert plan.status.phase == Phase.FAILED
    assert plan.status.error == ErrorStatus(
        reason="DatasetInvalid",
        message="preflight: train.jsonl line 7: bad JSON",
        exit_code=12,
    )
    assert conditions(plan)["DataValidated"].status == "False"
    assert plan.create_attempt is None


def test_preflight_can_be_skipped() -> None:
    plan = decide(snap(spec(preflight={"enabled": False})), SETTINGS)
    assert not plan.create_preflight and plan.create_attempt == 1


def test_unschedulable_preflight_is_a_condition_not_a_failure() -> None:
    status = decide(snap(), SETTINGS).status
    pending = kpod("preflight", None, phase="Pending", started=None, unschedulable="0/3 nodes: Insufficient cpu")
    plan = decide(snap(status=status, jobs=(kjob("preflight", None),), pods=(pending,)), SETTINGS)
    assert plan.status.phase == Phase.VALIDATING
    assert conditions(plan)["Unschedulable"].status == "True"


# -- queueing and suspension ---------------------------------------------------------------------


def test_suspended_spec_creates_the_job_suspended() -> None:
    plan = decide(snap(spec(suspend=True, preflight={"enabled": False})), SETTINGS)
    assert plan.create_attempt == 1 and plan.status.phase == Phase.SUSPENDED
    assert conditions(plan)["Suspended"].status == "True"


def test_kueue_queue_gives_queued_until_kueue_unsuspends() -> None:
    raw = spec(queueName="gpu-queue")
    plan = decide(snap(raw, accepted(raw), jobs=(kjob(suspended=True),)), SETTINGS)
    assert plan.status.phase == Phase.QUEUED
    assert conditions(plan)["Admitted"].status == "False"
    assert plan.suspend == {}  # Kueue admits, not the operator
    admitted = decide(snap(raw, plan.status, jobs=(kjob(),), pods=(kpod(phase="Pending", started=None),)), SETTINGS)
    assert admitted.status.phase == Phase.INITIALIZING
    assert conditions(admitted)["Admitted"].status == "True"


def test_suspend_a_running_job_then_resume_it() -> None:
    raw = spec()
    status = decide(snap(raw, accepted(raw), jobs=(kjob(),), pods=(kpod(),)), SETTINGS).status
    suspended = decide(snap(spec(suspend=True), status, jobs=(kjob(active=1),), pods=(kpod(),)), SETTINGS)
    assert suspended.suspend == {"ft-train-1": True}
    assert suspended.status.phase == Phase.SUSPENDED and "Suspended" in reasons(suspended)
    still = decide(snap(spec(suspend=True), suspended.status, jobs=(kjob(suspended=True),)), SETTINGS)
    assert still.suspend == {} and not still.events
    resumed = decide(snap(spec(suspend=False), still.status, jobs=(kjob(suspended=True),)), SETTINGS)
    assert resumed.suspend == {"ft-train-1": False}
    assert resumed.status.phase == Phase.INITIALIZING
    assert conditions(resumed)["Suspended"].status == "False"


# -- running -------------------------------------------------------------------------------------


def progress(**overrides: Any) -> ProgressReport:
    base: JSON = {
        "phase": "Running",
        "step": 40,
        "totalSteps": 100,
        "epoch": 1.2,
        "trainLoss": 1.23456,
        "evalLoss": None,
        "baselineEvalLoss": 2.5,
        "learningRate": 0.0002,
        "tokensPerSecond": 8123.4,
        "trainedTokens": 50000,
        "etaSeconds": 754.2,
        "checkpoints": [{"step": 40, "uri": "s3://artifacts/run/checkpoints/step-00000040/", "time": 1795000000.0}],
        "progressRatio": 0.4,
        "lastUpdateTime": 1795000001.0,
    }
    return ProgressReport.model_validate(base | overrides)


def test_progress_fills_status_and_checkpoint_condition() -> None:
    raw = spec()
    plan = decide(snap(raw, accepted(raw), jobs=(kjob(),), pods=(kpod(),), progress=progress()), SETTINGS)
    assert plan.status.phase == Phase.RUNNING
    assert plan.status.progress == ProgressStatus(
        percent="40%",
        step=40,
        total_steps=100,
        epoch=1.2,
        eta_seconds=754,
        eta="12m",
        tokens_per_second=8123.4,
        last_update_time=datetime.fromtimestamp(1795000001.0, UTC),
    )
    wire = plan.status.to_wire()
    assert wire["progress"]["lastUpdateTime"] == rfc3339(datetime.fromtimestamp(1795000001.0, UTC))
    assert plan.status.metrics == MetricsStatus(train_loss=1.2346, baseline_eval_loss=2.5, learning_rate=0.0002)
    assert plan.status.checkpoints[0].step == 40
    assert conditions(plan)["CheckpointSaved"].status == "True"
    assert "CheckpointSaved" in reasons(plan) and "Running" in reasons(plan)
    assert plan.status.start_time == NOW and wire["startTime"] == rfc3339(NOW)
    again = decide(snap(raw, plan.status, jobs=(kjob(),), pods=(kpod(),), progress=progress()), SETTINGS)
    assert not again.events  # level-triggered: nothing new, nothing posted


LEAK = "JambaForCausalLM: packed rows see each other in this architecture (...); rows are padded instead"


def test_model_report_fills_status_model_and_packing_turned_off_warns_once() -> None:
    raw = spec()
    model = {
        "modelType": "jamba",
        "architecture": "JambaForCausalLM",
        "attention": "sdpa",
        "packing": {"requested": True, "used": False, "reason": LEAK},
    }
    plan = decide(snap(raw, accepted(raw), jobs=(kjob(),), pods=(kpod(),), progress=progress(model=model)), SETTINGS)
    assert plan.status.model == ModelStatus(
        model_type="jamba", architecture="JambaForCausalLM", attention="sdpa", packing=False, packing_reason=LEAK
    )
    assert plan.status.to_wire()["model"]["packingReason"] == LEAK
    packing = conditions(plan)["PackingDisabled"]
    assert (packing.status, packing.reason, packing.message) == ("True", "PackedRowsLeak", LEAK)
    warnings = [e for e in plan.events if e.reason == "PackingDisabled"]
    assert [(e.type, e.message) for e in warnings] == [("Warning", LEAK)]
    again = decide(snap(raw, plan.status, jobs=(kjob(),), pods=(kpod(),), progress=progress(model=model)), SETTINGS)
    assert not [e for e in again.events if e.reason == "PackingDisabled"], "posted once"


def test_packing_kept_sets_no_condition_and_posts_nothing() -> None:
    raw = spec()
    model = {"modelType": "llama", "architecture": "LlamaForCausalLM", "attention": "sdpa"}
    model["packing"] = {"requested": True, "used": True}
    plan = decide(snap(raw, accepted(raw), jobs=(kjob(),), pods=(kpod(),), progress=progress(model=model)), SETTINGS)
    assert plan.status.model is not None and plan.status.model.packing is True
    assert "PackingDisabled" not in conditions(plan)
    assert "PackingDisabled" not in reasons(plan)


def test_a_run_too_short_to_poll_still_warns_from_its_summary() -> None:
    raw = spec()
    summary = {"status": "Succeeded", "job": "ft", "step": 3, "totalSteps": 3}
    summary["model"] = {
        "modelType": "jamba",
        "architecture": "JambaForCausalLM",
        "packing": {"requested": True, "used": False, "reason": LEAK},
    }
    done = kpod(phase="Succeeded", exit_code=0, message=json.dumps(summary))
    plan = decide(snap(raw, accepted(raw), jobs=(kjob(condition=("Complete", "")),), pods=(done,)), SETTINGS)
    assert plan.status.phase == Phase.SUCCEEDED
    assert conditions(plan)["PackingDisabled"].status == "True"
    assert ("Warning", "PackingDisabled") in [(e.type, e.reason) for e in plan.events]


@pytest.mark.parametrize(
    ("trainer_phase", "step", "phase"),
    [
        ("Staging", 0, "Initializing"),
        ("Evaluating", 0, "Initializing"),
        ("Evaluating", 100, "Running"),
        ("Exporting", 100, "Exporting"),
    ],
)
def test_trainer_phases_map_to_job_phases(trainer_phase: str, step: int, phase: str) -> None:
    raw = spec()
    plan = decide(
        snap(raw, accepted(raw), jobs=(kjob(),), pods=(kpod(),), progress=progress(phase=trainer_phase, step=step)),
        SETTINGS,
    )
    assert plan.status.phase == phase


def test_a_missed_progress_poll_never_moves_the_phase_backwards() -> None:
    raw = spec()
    running = decide(snap(raw, accepted(raw), jobs=(kjob(),), pods=(kpod(),), progress=progress()), SETTINGS)
    exporting = decide(
        snap(raw, running.status, jobs=(kjob(),), pods=(kpod(),), progress=progress(phase="Exporting")), SETTINGS
    )
    missed = decide(snap(raw, exporting.status, jobs=(kjob(),), pods=(kpod(),), progress=None), SETTINGS)
    assert missed.status.phase == Phase.EXPORTING and not missed.events


def test_unschedulable_trainer_is_a_condition_while_pending() -> None:
    raw = spec()
    pending = kpod(
        phase="Pending", started=None, unschedulable="0/4 nodes are available: 4 Insufficient nvidia.com/gpu."
    )
    plan = decide(snap(raw, accepted(raw), jobs=(kjob(),), pods=(pending,)), SETTINGS)
    assert plan.status.phase == Phase.INITIALIZING
    assert conditions(plan)["Unschedulable"].status == "True"
    assert "Failed" not in conditions(plan)


def test_success_records_artifacts_metrics_and_completion() -> None:
    raw = spec()
    summary = json.dumps(
        {
            "status": "Succeeded",
            "job": "ft",
            "step": 100,
            "totalSteps": 100,
            "trainedTokens": 120000,
            "trainLoss": 0.5,
            "eval": {"baseline": {"loss": 2.5}, "finetuned": {"loss": 0.9}},
            "adapterUri": "s3://artifacts/run/adapter/",
            "manifestUri": "s3://artifacts/run/manifest.json",
        }
    )
    done = kpod(phase="Succeeded", exit_code=0, message=summary)
    admitted = accepted(raw)
    plan = decide(snap(raw, admitted, jobs=(kjob(condition=("Complete", "")),), pods=(done,)), SETTINGS)
    assert plan.status.phase == Phase.SUCCEEDED
    assert admitted.accepted_spec is not None
    assert plan.status.artifacts == ArtifactsStatus(
        output_uri="s3://artifacts/run/",
        adapter_uri="s3://artifacts/run/adapter/",
        manifest_uri="s3://artifacts/run/manifest.json",
        serving=serving_status("ft", admitted.accepted_spec, "s3://artifacts/run/adapter/"),
    )
    assert plan.status.metrics == MetricsStatus(train_loss=0.5, eval_loss=0.9, baseline_eval_loss=2.5)
    assert plan.status.progress is not None and plan.status.progress.percent == "100%"
    assert plan.status.completion_time == NOW and plan.status.to_wire()["completionTime"] == rfc3339(NOW)
    assert conditions(plan)["Complete"].status == "True"
    assert plan.requeue_after == 604_800  # the default ttlSecondsAfterFinished


def test_gpu_seconds_accumulate_over_pods() -> None:
    raw = spec(resources={"gpus": 2})
    finished = kpod(phase="Failed", exit_code=21, attempt=1)  # ran 30 minutes
    running = kpod(attempt=2, started="2026-11-23T11:50:00Z", created="2026-11-23T11:49:00Z")
    status = accepted(raw, attempts=2)
    plan = decide(
        snap(raw, status, jobs=(kjob(condition=("Failed", "x")), kjob(attempt=2)), pods=(finished, running)), SETTINGS
    )
    assert plan.status.gpu_seconds == (1800 + 600) * 2


# -- failures and retries ------------------------------------------------------------------------


def failed_pod(code: int, reason: str, message: str = "boom", terminated_reason: str | None = None) -> PodView:
    text = json.dumps({"status": "Failed", "job": "ft", "reason": reason, "message": message})
    return kpod(phase="Failed", exit_code=code, message=text, terminated_reason=terminated_reason)


def test_infrastructure_failure_retries_as_a_new_attempt_that_resumes() -> None:
    raw = spec(backoffLimit=2)
    status = accepted(raw, attempts=1, checkpoints=[CheckpointStatus(step=40, uri="s3://a/ck/", time=NOW)])
    plan = decide(
        snap(
            raw,
            status,
            jobs=(kjob(condition=("Failed", "BackoffLimitExceeded")),),
            pods=(failed_pod(21, "StorageError"),),
        ),
        SETTINGS,
    )
    assert plan.create_attempt == 2 and plan.status.attempts == 2
    assert plan.status.phase == Phase.INITIALIZING
    assert plan.status.last_failure is not None and plan.status.last_failure.reason == "StorageError"
    retry = next(e for e in plan.events if e.reason == "Retrying")
    assert retry.type == "Warning" and "resuming from step 40" in retry.message and "attempt 2 of 3" in retry.message
    assert plan.delete_jobs == []  # a finished single-pod Job is kept for its logs


def test_retries_stop_at_backoff_limit() -> None:
    raw = spec(backoffLimit=1)
    status = accepted(raw, attempts=2)
    pods = (kpod(attempt=2, phase="Failed", exit_code=137),)
    plan = decide(
        snap(raw, status, jobs=(kjob(attempt=2, condition=("Failed", "BackoffLimitExceeded")),), pods=pods), SETTINGS
    )
    assert plan.status.phase == Phase.FAILED and plan.status.error is not None
    assert plan.status.error.reason == "BackoffLimitExceeded"
    assert "the last: Killed" in plan.status.error.message
    assert plan.status.error.exit_code == 137
    assert plan.create_attempt is None


@pytest.mark.parametrize(
    ("pod", "reason"),
    [
        (failed_pod(12, "DatasetInvalid"), "DatasetInvalid"),
        (failed_pod(15, "S3AccessDenied"), "S3AccessDenied"),
        (failed_pod(22, "GPUOOM"), "GPUOOM"),
        (failed_pod(30, "UnsupportedModel"), "UnsupportedModel"),  # kubetune's limit: a retry cannot help
        (kpod(phase="Failed", exit_code=137, terminated_reason="OOMKilled"), "OOMKilled"),
        (kpod(phase="Pending", started=None, waiting="ImagePullBackOff", message="pull denied"), "ImagePullBackOff"),
    ],
)
def test_user_errors_and_oom_are_never_retried(pod: PodView, reason: str) -> None:
    raw = spec(backoffLimit=5)
    plan = decide(snap(raw, accepted(raw, attempts=1), jobs=(kjob(),), pods=(pod,)), SETTINGS)
    assert plan.status.phase == Phase.FAILED and plan.status.error is not None
    assert plan.status.error.reason == reason
    assert plan.create_attempt is None
    assert conditions(plan)["Failed"].reason == reason


def test_a_failed_rank_stops_the_other_ranks_and_the_retry_starts_once_they_are_gone() -> None:
    """The surviving rank still holds its GPUs and the rendezvous port while it stops: attempt 2
    is created once it is gone (finished, or removed), never beside it."""
    raw = spec(resources={"gpus": 8, "nodes": 2})
    dead = kpod(index=1, phase="Failed", exit_code=137)
    ranks = (kpod(index=0), dead)
    plan = decide(snap(raw, accepted(raw, attempts=1), jobs=(kjob(active=1),), pods=ranks), SETTINGS)
    assert plan.delete_jobs == ["ft-train-1"] and plan.create_attempt is None
    assert plan.status.attempts == 2 and plan.status.phase == Phase.INITIALIZING
    assert plan.status.message == "retrying: attempt 2 waits for ft-train-1-0-abcde to stop"
    assert [e.reason for e in plan.events].count("Retrying") == 1

    # The next reconcile: the Job is being deleted and rank 0 is stopping within its grace period.
    stopping = dataclasses.replace(kpod(index=0), deletion_deadline=NOW + timedelta(seconds=30))
    waiting = decide(snap(raw, plan.status, jobs=(), pods=(stopping, dead)), SETTINGS)
    assert waiting.create_attempt is None and "Retrying" not in [e.reason for e in waiting.events]
    assert waiting.status.message == "retrying: attempt 2 waits for ft-train-1-0-abcde to stop"

    gone = decide(snap(raw, plan.status, jobs=(), pods=(dead,)), SETTINGS)
    assert gone.create_attempt == 2 and gone.status.attempts == 2


def test_a_rank_stuck_terminating_on_a_lost_node_does_not_block_the_retry_forever() -> None:
    raw = spec(resources={"gpus": 8, "nodes": 2})
    status = accepted(raw, attempts=2)
    stuck = dataclasses.replace(kpod(index=0), deletion_deadline=NOW - timedelta(minutes=5))
    plan = decide(snap(raw, status, jobs=(), pods=(stuck,)), SETTINGS)
    assert plan.create_attempt == 2


def test_image_pull_failure_deletes_the_stuck_job() -> None:
    raw = spec()
    stuck = kpod(phase="Pending", started=None, waiting="ErrImagePull")
    plan = decide(snap(raw, accepted(raw, attempts=1), jobs=(kjob(active=1),), pods=(stuck,)), SETTINGS)
    assert plan.delete_jobs == ["ft-train-1"]


def test_job_deadline_exceeded_is_not_retried() -> None:
    raw = spec()
    plan = decide(
        snap(raw, accepted(raw, attempts=1), jobs=(kjob(condition=("Failed", "DeadlineExceeded")),)), SETTINGS
    )
    assert plan.status.error is not None and plan.status.error.reason == "DeadlineExceeded"
    assert plan.create_attempt is None


def test_active_deadline_counts_across_attempts() -> None:
    raw = spec(activeDeadlineSeconds=3600)
    start = NOW - timedelta(seconds=3000)
    status = accepted(raw, attempts=1, start_time=start)
    retry = decide(
        snap(raw, status, jobs=(kjob(condition=("Failed", "x")),), pods=(failed_pod(21, "StorageError"),)), SETTINGS
    )
    assert retry.attempt_deadline_seconds == 600  # what is left, not a fresh hour
    late = decide(
        snap(
            raw,
            retry.status.model_copy(update={"start_time": NOW - timedelta(seconds=3601)}),
            jobs=(kjob(condition=("Failed", "x")), kjob(attempt=2, active=1)),
            pods=(kpod(attempt=2),),
        ),
        SETTINGS,
    )
    assert late.status.error is not None and late.status.error.reason == "DeadlineExceeded"
    assert late.delete_jobs == ["ft-train-2"]


# -- idempotence and restarts ----------------------------------------------------------------------


def test_restart_with_attempt_two_running_creates_nothing() -> None:
    raw = spec()
    status = accepted(raw, attempts=2, start_time=NOW)
    jobs = (kjob(condition=("Failed", "BackoffLimitExceeded")), kjob(attempt=2, active=1))
    plan = decide(snap(raw, status, jobs=jobs, pods=(kpod(attempt=2),)), SETTINGS)
    assert plan.create_attempt is None and not plan.create_preflight and not plan.delete_jobs


def test_status_lagging_behind_the_children_is_caught_up() -> None:
    """A crash between creating attempt 2 and writing status: the index knows better."""
    raw = spec()
    plan = decide(
        snap(raw, accepted(raw, attempts=1), jobs=(kjob(condition=("Failed", "x")), kjob(attempt=2))), SETTINGS
    )
    assert plan.status.attempts == 2 and plan.create_attempt is None


def test_a_job_not_yet_in_the_index_is_created_again_under_the_same_name() -> None:
    raw = spec()
    plan = decide(snap(raw, accepted(raw, attempts=1)), SETTINGS)
    assert plan.create_attempt == 1  # a 409 for the executor: same name, no duplicate


# -- immutability --------------------------------------------------------------------------------


def test_immutable_changes_are_ignored_with_a_condition_and_mutable_ones_apply() -> None:
    raw = spec()
    status = accepted(raw, attempts=1)
    edited = spec(baseModel={"uri": "s3://models/other/"}, backoffLimit=7)
    plan = decide(snap(edited, status, jobs=(kjob(),), pods=(kpod(),), generation=2), SETTINGS)
    applied = conditions(plan)["SpecApplied"]
    assert applied.status == "False" and applied.reason == "ImmutableFieldChanged"
    assert "spec.baseModel" in applied.message and "backoffLimit" not in applied.message
    assert plan.status.accepted_spec is not None and plan.status.accepted_spec.base_model.uri == "s3://models/llama/"
    assert ("Warning", "ImmutableFieldChanged") in [(e.type, e.reason) for e in plan.events]
    assert plan.status.observed_generation == 2
    retried = decide(
        snap(edited, plan.status, jobs=(kjob(condition=("Failed", "x")),), pods=(failed_pod(21, "StorageError"),)),
        SETTINGS,
    )
    assert "of 8" in next(e.message for e in retried.events if e.reason == "Retrying")  # backoffLimit 7 applies


# -- cancellation (spec.cancel) ------------------------------------------------------------------


def running(raw: JSON) -> FineTuneJobStatus:
    """The status of a job training at step 40 with a checkpoint."""
    return decide(snap(raw, accepted(raw), jobs=(kjob(),), pods=(kpod(),), progress=progress()), SETTINGS).status


def test_cancel_stops_a_running_job_and_keeps_its_status() -> None:
    status = running(spec())
    plan = decide(snap(spec(cancel=True), status, jobs=(kjob(active=1),), pods=(kpod(),), generation=2), SETTINGS)
    assert plan.status.phase == Phase.CANCELLED
    assert plan.delete_children  # the trainer Job goes: its pod gets SIGTERM and checkpoints
    assert plan.create_attempt is None and not plan.create_preflight and plan.suspend == {}
    cancelled = conditions(plan)["Cancelled"]
    assert (cancelled.status, cancelled.reason, cancelled.observed_generation) == ("True", "UserCancelled", 2)
    assert (conditions(plan)["Running"].status, conditions(plan)["Running"].reason) == ("False", "UserCancelled")
    assert "Failed" not in conditions(plan) and plan.status.error is None  # a choice, not a failure
    assert [(e.type, e.reason) for e in plan.events] == [("Normal", "UserCancelled")]
    assert plan.status.completion_time == NOW
    assert plan.status.checkpoints == status.checkpoints and plan.status.checkpoints  # kept for resuming elsewhere
    assert plan.status.progress == status.progress and plan.status.metrics == status.metrics
    assert plan.requeue_after == 604_800  # ttlSecondsAfterFinished applies


def test_cancelled_is_terminal_and_cancel_false_changes_nothing() -> None:
    cancelled = decide(snap(spec(cancel=True), running(spec()), jobs=(kjob(active=1),), pods=(kpod(),)), SETTINGS)
    again = decide(snap(spec(cancel=True), cancelled.status, now=NOW + timedelta(seconds=5)), SETTINGS)
    assert again.status == cancelled.status and not again.events and not again.delete_children
    undone = decide(snap(spec(cancel=False), cancelled.status, generation=3), SETTINGS)
    assert undone.status.phase == Phase.CANCELLED and undone.create_attempt is None and not undone.events
    assert undone.status.completion_time == NOW


def test_cancel_follows_the_ttl_of_the_live_spec() -> None:
    cancelled = decide(snap(spec(cancel=True), running(spec())), SETTINGS).status
    raw = spec(cancel=True, ttlSecondsAfterFinished=60)
    expired = decide(snap(raw, cancelled, now=NOW + timedelta(seconds=61)), SETTINGS)
    assert expired.delete_self


@pytest.mark.parametrize("phase", [None, Phase.VALIDATING, Phase.SUSPENDED])
def test_cancel_before_training_creates_nothing_more(phase: Phase | None) -> None:
    raw = spec(suspend=phase == Phase.SUSPENDED)
    jobs: tuple[JobView, ...] = ()
    before: FineTuneJobStatus | None = None  # not even admitted yet
    if phase == Phase.VALIDATING:
        before, jobs = decide(snap(raw), SETTINGS).status, (kjob("preflight", None, active=1),)
    elif phase == Phase.SUSPENDED:
        jobs = (kjob(suspended=True),)
        before = decide(snap(raw, accepted(raw), jobs=jobs), SETTINGS).status
        assert conditions(Decision(before))["Suspended"].status == "True"
    assert (before.phase if before else None) == phase
    plan = decide(snap(raw | {"cancel": True}, before, jobs=jobs), SETTINGS)
    assert plan.status.phase == Phase.CANCELLED
    assert plan.delete_children and plan.create_attempt is None and not plan.create_preflight
    assert "Suspended" not in conditions(plan) or conditions(plan)["Suspended"].status == "False"


def test_cancel_applies_even_when_the_same_edit_breaks_another_field() -> None:
    status = running(spec())
    plan = decide(snap(spec(cancel=True, lora={"r": 0}), status, jobs=(kjob(active=1),), generation=2), SETTINGS)
    assert plan.status.phase == Phase.CANCELLED and plan.delete_children


def test_cancel_after_success_changes_nothing() -> None:
    raw = spec()
    done = accepted(raw, phase=Phase.SUCCEEDED, completion_time=NOW - timedelta(seconds=30))
    plan = decide(snap(spec(cancel=True), done, generation=2), SETTINGS)
    assert plan.status.phase == Phase.SUCCEEDED and not plan.delete_children and not plan.events
    assert "Cancelled" not in conditions(plan)


# -- finished jobs -------------------------------------------------------------------------------


def test_ttl_after_finished_deletes_the_job() -> None:
    raw = spec(ttlSecondsAfterFinished=60)
    status = accepted(raw, phase=Phase.SUCCEEDED, completion_time=NOW - timedelta(seconds=30))
    waiting = decide(snap(raw, status), SETTINGS)
    assert not waiting.delete_self and waiting.requeue_after == 30
    expired = decide(snap(raw, status, now=NOW + timedelta(seconds=31)), SETTINGS)
    assert expired.delete_self and not expired.events


def test_no_ttl_means_no_timer() -> None:
    raw = spec(ttlSecondsAfterFinished=None)
    status = accepted(raw, phase=Phase.FAILED, completion_time=NOW)
    plan = decide(snap(raw, status), SETTINGS)
    assert plan.requeue_after is None and not plan.delete_self


# -- helpers -------------------------------------------------------------------------------------


def test_merge_patch_removes_replaces_and_recurses() -> None:
    old = {"phase": "Running", "error": {"reason": "x"}, "progress": {"step": 1, "eta": "1m"}, "list": [1]}
    new = {"phase": "Succeeded", "progress": {"step": 2}, "list": [1, 2]}
    assert merge_patch(old, new) == {
        "phase": "Succeeded",
        "error": None,
        "progress": {"step": 2, "eta": None},
        "list": [1, 2],
    }
    assert merge_patch(new, new) == {}


def test_checkpoints_merge_by_step() -> None:
    known = [CheckpointStatus(step=10, uri="a", time=NOW)]
    merged = merge_checkpoints(
        known, [CheckpointRecord(step=20, uri="b", time=0.0), CheckpointRecord(step=10, uri="a", time=0.0)]
    )
    assert [c.step for c in merged] == [10, 20] and merged[1].time == datetime(1970, 1, 1, tzinfo=UTC)
    assert FineTuneJobStatus(checkpoints=merged).to_wire()["checkpoints"][1]["time"] == "1970-01-01T00:00:00Z"


def test_progress_url_targets_the_current_attempts_rank_zero() -> None:
    pods = (kpod(attempt=1, phase="Failed", exit_code=21), kpod(attempt=2))
    assert progress_url(2, pods) == "http://10.0.0.7:9090/progress"
    assert progress_url(3, pods) is None


def test_the_suggestion_names_more_gpus_and_sharding_when_that_is_the_fix() -> None:
    from kubetune_operator.status_from_reports import describe_change

    sharded = FIT.suggestion.model_copy(update={"method": "fsdp", "gpus": 8, "micro_batch": 8})  # type: ignore[union-attr]
    text = describe_change(FIT.job, sharded)
    assert text.startswith("8 GPUs in all (resources.gpus x resources.nodes); training.sharding: fsdp (or auto)")
    assert "lora.quantization" not in text


def test_status_shows_the_world_size_from_admission() -> None:
    plan = decide(snap(spec(resources={"gpus": 8, "nodes": 2})), SETTINGS)
    assert plan.status.world_size == 16
    assert decide(snap(spec(resources={"gpus": 0})), SETTINGS).status.world_size == 1


# -- the evaluation gate -------------------------------------------------------------------------

GATED_SPEC = spec(evaluation={"gate": {"metric": "evalLoss", "threshold": 1.0, "mustBeatBaseline": True}})


def finish_with(raw: JSON, summary: JSON | None) -> Decision:
    message = json.dumps({"status": "Succeeded", "job": "ft", "step": 100, "totalSteps": 100, **(summary or {})})
    done = kpod(phase="Succeeded", exit_code=0, message=message if summary is not None else None)
    return decide(snap(raw, accepted(raw), jobs=(kjob(condition=("Complete", "")),), pods=(done,)), SETTINGS)


def test_a_passed_gate_sets_evaluation_passed_and_a_normal_event() -> None:
    verdict = {"passed": True, "metric": "evalLoss", "value": 0.9, "threshold": 1.0, "baseline": 2.5,
               "mustBeatBaseline": True, "reason": "ThresholdMet", "message": "evalLoss 0.9, at most 1"}  # fmt: skip
    plan = finish_with(GATED_SPEC, {"eval": {"baseline": {"loss": 2.5}, "finetuned": {"loss": 0.9}}, "gate": verdict})
    assert plan.status.phase == Phase.SUCCEEDED
    passed = conditions(plan)["EvaluationPassed"]
    assert (passed.status, passed.reason, passed.message) == ("True", "ThresholdMet", "evalLoss 0.9, at most 1")
    assert ("Normal", "EvaluationPassed") in [(e.type, e.reason) for e in plan.events]
    assert plan.status.evaluation is not None and plan.status.evaluation.result == "Passed"
    assert plan.status.to_wire()["evaluation"]["result"] == "Passed"  # the EVAL column


def test_a_failed_gate_is_a_warning_but_the_job_succeeds_with_its_adapter() -> None:
    summary = {"eval": {"baseline": {"loss": 2.5}, "finetuned": {"loss": 1.7}}, "adapterUri": "s3://artifacts/run/"}
    plan = finish_with(GATED_SPEC, summary)  # no verdict in the summary: the operator judges the numbers
    assert plan.status.phase == Phase.SUCCEEDED and plan.status.error is None
    failed = conditions(plan)["EvaluationPassed"]
    assert (failed.status, failed.reason) == ("False", "ThresholdNotMet")
    assert failed.message == "evalLoss 1.7 is above the maximum 1"
    assert conditions(plan)["Complete"].status == "True"
    assert "the evaluation gate failed (ThresholdNotMet)" in conditions(plan)["Complete"].message
    [warning] = [e for e in plan.events if e.reason == "EvaluationGateFailed"]
    assert warning.type == "Warning"
    assert warning.message == (
        "ThresholdNotMet: evalLoss 1.7 is above the maximum 1; the adapter is published at s3://artifacts/run/"
    )
    evaluation = plan.status.evaluation
    assert evaluation is not None and evaluation.result == "Failed"
    assert (evaluation.value, evaluation.threshold, evaluation.baseline) == (1.7, 1.0, 2.5)


def test_not_better_than_the_baseline_is_its_own_reason() -> None:
    plan = finish_with(GATED_SPEC, {"eval": {"baseline": {"loss": 0.8}, "finetuned": {"loss": 0.9}}})
    assert conditions(plan)["EvaluationPassed"].reason == "NotBetterThanBaseline"


def test_no_gate_no_condition_and_no_event() -> None:
    plan = finish_with(spec(), {"eval": {"baseline": {"loss": 2.5}, "finetuned": {"loss": 0.9}}})
    assert "EvaluationPassed" not in conditions(plan)
    assert not {"EvaluationPassed", "EvaluationGateFailed"} & set(reasons(plan))
    assert plan.status.evaluation is not None and plan.status.evaluation.result is None  # the numbers only
    assert plan.status.evaluation.eval_loss == 0.9


def test_a_gate_with_nothing_reported_is_unknown_with_a_warning() -> None:
    plan = finish_with(GATED_SPEC, None)  # the pod left no summary
    unknown = conditions(plan)["EvaluationPassed"]
    assert (unknown.status, unknown.reason) == ("Unknown", "NotReported")
    assert ("Warning", "EvaluationNotReported") in [(e.type, e.reason) for e in plan.events]
    assert plan.status.phase == Phase.SUCCEEDED


def test_the_verdict_event_follows_the_succeeded_event() -> None:
    plan = finish_with(GATED_SPEC, {"eval": {"baseline": {"loss": 2.5}, "finetuned": {"loss": 1.7}}})
    assert reasons(plan)[-2:] == ["Succeeded", "EvaluationGateFailed"]
