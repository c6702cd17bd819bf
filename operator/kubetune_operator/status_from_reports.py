"""The trainer's reports, copied into the FineTuneJob status. Pure: report in, status fields out.

PreflightReport (preflight termination message) -> status.preflight
ProgressReport  (GET /progress, every poll)      -> status.progress, .metrics, .checkpoints
RunSummary      (trainer termination message)    -> status.artifacts, .metrics, .progress, .checkpoints,
                                                    .evaluation
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from kubetune_api.gate import judge_gate
from kubetune_api.protocol import (
    CheckpointRecord,
    DataQuality,
    Evaluations,
    FitOption,
    FitPlan,
    GateResult,
    ModelReport,
    PreflightReport,
    ProgressReport,
    RunSummary,
    TrainerPhase,
)
from kubetune_api.serving import check_adapter_config, serving_snippets, spec_adapter_config
from kubetune_api.spec import FineTuneJobSpec
from kubetune_api.status import (
    ArtifactsStatus,
    CheckpointStatus,
    DataQualityStatus,
    EvaluationStatus,
    FineTuneJobStatus,
    FitStatus,
    GateOutcome,
    MemoryFit,
    MetricsStatus,
    ModelStatus,
    Phase,
    PreflightStatus,
    PreflightWarning,
    ProgressStatus,
    ServingStatus,
)

GIB = 2**30

# What the trainer is doing -> the FineTuneJob phase. Evaluating is both the baseline (before
# training: Initializing) and the final eval (Running); see job_phase().
_PHASE_OF = {
    TrainerPhase.INITIALIZING: Phase.INITIALIZING,
    TrainerPhase.STAGING: Phase.INITIALIZING,
    TrainerPhase.PREPARING: Phase.INITIALIZING,
    TrainerPhase.LOADING: Phase.INITIALIZING,
    TrainerPhase.RUNNING: Phase.RUNNING,
    TrainerPhase.CHECKPOINTING: Phase.RUNNING,
    TrainerPhase.EXPORTING: Phase.EXPORTING,
    TrainerPhase.DONE: Phase.EXPORTING,
}


def job_phase(progress: ProgressReport) -> Phase:
    """The FineTuneJob phase a trainer report stands for (a newer trainer's unknown phase: Running)."""
    if progress.phase == TrainerPhase.EVALUATING:
        return Phase.RUNNING if progress.step > 0 else Phase.INITIALIZING
    phase = progress.phase
    return _PHASE_OF[phase] if isinstance(phase, TrainerPhase) and phase in _PHASE_OF else Phase.RUNNING


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def eta_text(seconds: float | None) -> str | None:
    """Human ETA for the printer column: 45s, 12m, 3h05m."""
    if seconds is None:
        return None
    total = max(0, round(seconds))
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m"
    return f"{total // 3600}h{(total % 3600) // 60:02d}m"


def preflight_status(
    report: PreflightReport,
    spec: FineTuneJobSpec,
    gpu_memory_gib: float,
    price_of: Callable[[str], float | None] = lambda gpu_type: None,
    currency: str = "USD",
) -> PreflightStatus:
    """The preflight Job's report, as status.preflight. `price_of`: price per GPU-hour of a GPU type."""
    data, plan = report.data, report.plan
    out = PreflightStatus(
        format=data.format,
        train_rows=data.train_rows,
        validation_rows=data.validation_rows,
        train_tokens=data.train_tokens,
        trainable_tokens=data.trainable_tokens,
        truncated_rows=data.truncated_rows,
        dropped_rows=data.dropped_rows,
        packing_efficiency=_round(data.packing_efficiency, 3),
        epochs=plan.epochs,
        batch_size=plan.batch_size,
        estimated_steps=plan.total_steps,
    )
    if report.memory is not None and spec.resources.gpus > 0:
        per_gpu = report.memory.total_bytes
        out.estimated_gpu_memory_bytes = per_gpu
        fits = per_gpu <= gpu_memory_gib * GIB
        if report.fit is not None and report.fit.fits is not None:
            fits = report.fit.fits  # the job's own GPU type, with the planner's headroom
        out.memory_fit = MemoryFit.FITS if fits else MemoryFit.MAY_NOT_FIT
    if report.fit is not None and spec.resources.gpus > 0:
        out.fit = fit_status(report.fit, price_of, currency)
    if report.quality is not None:
        out.quality = quality_status(report.quality)
        out.warnings = [
            PreflightWarning(code=str(w.code), message=w.message[:1024], field=w.field, example=w.example)
            for w in report.quality.warnings
        ]
    return out


def quality_status(quality: DataQuality) -> DataQualityStatus:
    lengths = quality.train_lengths
    return DataQualityStatus(
        p50_row_tokens=lengths.p50,
        p95_row_tokens=lengths.p95,
        max_row_tokens=lengths.max,
        truncated_share=_round(quality.truncated_share, 4),
        duplicate_rows=quality.duplicate_rows,
        near_duplicate_rows=quality.near_duplicate_rows,
        leaked_validation_rows=quality.leaked_validation_rows,
        empty_answers=quality.empty_answers,
        rows_per_format=quality.rows_per_format,
    )


def fit_status(fit: FitPlan, price_of: Callable[[str], float | None], currency: str) -> FitStatus:
    price = price_of(fit.gpu_type) if fit.gpu_type else None
    hours = fit.job.gpu_hours
    return FitStatus(
        gpu_type=fit.gpu_type,
        fits=fit.fits,
        method=fit.job.method,
        memory_per_gpu_bytes=fit.job.memory_bytes,
        suggestion=describe_change(fit.job, fit.suggestion) if fit.suggestion else None,
        gpu_hours=_significant(hours),
        wall_hours=_significant(fit.wall_hours),
        estimated_cost=None if price is None or hours is None else round(price * hours, 2),
        currency=currency if price is not None and hours is not None else None,
    )


def _significant(value: float | None, digits: int = 3) -> float | None:
    """Rounded to `digits` significant figures: a small job's 0.000412 GPU-hours is not 0."""
    return None if value is None else float(f"{value:.{digits}g}")


def describe_change(job: FitOption, option: FitOption) -> str:
    """What to change in the spec to get from `job` to `option`, with field names."""
    changes = []
    if option.gpus != job.gpus:
        changes.append(f"{option.gpus} GPUs in all (resources.gpus x resources.nodes)")
    if option.method == "fsdp" and job.method != "fsdp":
        changes.append("training.sharding: fsdp (or auto)")
    elif option.method != job.method:
        changes.append(f"lora.quantization: {option.method.removeprefix('qlora-')}")
    if option.gradient_checkpointing and not job.gradient_checkpointing:
        changes.append("training.gradientCheckpointing: true")
    if option.micro_batch != job.micro_batch:
        accumulation = job.micro_batch // option.micro_batch
        changes.append(
            f"training.batchSize: {option.micro_batch} with gradientAccumulationSteps ×{accumulation} "
            "(the same rows per step)"
        )
    hours = f", {option.gpu_hours:.3g} GPU-hours" if option.gpu_hours is not None else ""
    return f"{'; '.join(changes)} (about {option.memory_bytes / GIB:.1f} GiB per GPU{hours})"


def fit_message(fit: FitStatus) -> str:
    """One line for the FitPlanned / WillNotFit Events."""
    memory = f"{(fit.memory_per_gpu_bytes or 0) / GIB:.1f} GiB per GPU"
    where = f"on {fit.gpu_type}" if fit.gpu_type else "on an unknown GPU type (no verdict)"
    verdict = {True: "fits", False: "does not fit", None: "estimated"}[fit.fits]
    parts = [f"{fit.method} {verdict} {where}: {memory}"]
    if fit.gpu_hours is not None:
        parts.append(f"{fit.gpu_hours:.3g} GPU-hours")
    if fit.estimated_cost is not None:
        parts.append(f"about {fit.estimated_cost:,.2f} {fit.currency}")
    if fit.suggestion:
        parts.append(f"cheapest change that fits: {fit.suggestion}")
    return "; ".join(parts)


def apply_progress(status: FineTuneJobStatus, progress: ProgressReport, max_checkpoints: int) -> None:
    """Copy the trainer's /progress into status.progress, status.metrics and status.checkpoints."""
    eta = progress.eta_seconds
    status.progress = ProgressStatus(
        percent=f"{progress.progress_ratio * 100:.0f}%",
        step=progress.step,
        total_steps=progress.total_steps,
        epoch=_round(progress.epoch, 3),
        eta_seconds=None if eta is None else round(eta),
        eta=eta_text(eta),
        tokens_per_second=_round(progress.tokens_per_second, 1),
        last_update_time=datetime.fromtimestamp(progress.last_update_time, UTC) if progress.last_update_time else None,
    )
    metrics = (status.metrics or MetricsStatus()).model_copy()
    for name, digits in (("train_loss", 4), ("eval_loss", 4), ("baseline_eval_loss", 4), ("learning_rate", 6)):
        value = _round(getattr(progress, name), digits)
        if value is not None:
            setattr(metrics, name, value)
    status.metrics = metrics
    status.trained_tokens = progress.trained_tokens
    if progress.model is not None:
        status.model = model_status(progress.model)
    status.checkpoints = merge_checkpoints(status.checkpoints, progress.checkpoints)[-max_checkpoints:]


def model_status(report: ModelReport) -> ModelStatus:
    packing = report.packing
    return ModelStatus(
        model_type=report.model_type,
        architecture=report.architecture,
        attention=report.attention,
        packing=packing.used if packing else None,
        packing_reason=packing.reason[:1024] if packing and packing.reason else None,
    )


def merge_checkpoints(known: list[CheckpointStatus], reported: list[CheckpointRecord]) -> list[CheckpointStatus]:
    """Union by step, oldest first (a retry's trainer reports only its own checkpoints)."""
    by_step = {c.step: c for c in known}
    for checkpoint in reported:
        by_step[checkpoint.step] = CheckpointStatus(
            step=checkpoint.step, uri=checkpoint.uri, time=datetime.fromtimestamp(checkpoint.time, UTC)
        )
    return [by_step[step] for step in sorted(by_step)]


def serving_status(job: str, spec: FineTuneJobSpec, adapter_uri: str) -> ServingStatus:
    """The serving snippets for a published adapter, from the accepted spec alone.

    The operator never reads the adapter's files: the rules that the spec decides (DoRA, rank,
    output-head targets) are checked here; the trainer checks the published files themselves and
    records the outcome in manifest.json (serving.vllm).
    """
    lora = spec.lora
    config = spec_adapter_config(
        lora.r, lora.alpha, lora.target_modules, use_dora=lora.use_dora, use_rslora=lora.use_rslora
    )
    snippets = serving_snippets(
        job or "adapter",
        spec.base_model.uri,
        adapter_uri,
        lora.r,
        storage_endpoint=spec.storage.endpoint,
        merged=spec.output.merge_adapter,
        problems=check_adapter_config(config),
    )
    return ServingStatus(
        vllm_command=snippets.vllm_command,
        kserve_inference_service=snippets.kserve_inference_service,
        merged_vllm_command=snippets.merged_vllm_command,
        vllm_problems=[p[:1024] for p in snippets.problems[:8]],
    )


def apply_summary(
    status: FineTuneJobStatus, summary: RunSummary | None, spec: FineTuneJobSpec, max_checkpoints: int
) -> None:
    """A successful run's summary: artifacts, final losses, checkpoints, 100 %. None: the pod left no summary."""
    status.artifacts = ArtifactsStatus(
        output_uri=spec.output.uri,
        adapter_uri=summary.adapter_uri if summary else None,
        manifest_uri=summary.manifest_uri if summary else None,
        serving=serving_status(summary.job, spec, summary.adapter_uri) if summary and summary.adapter_uri else None,
    )
    metrics = (status.metrics or MetricsStatus()).model_copy()
    progress = (status.progress or ProgressStatus()).model_copy()
    progress.percent, progress.eta_seconds, progress.eta = "100%", 0, "0s"
    if summary is not None:
        evals = summary.eval
        if evals is not None and evals.finetuned is not None and evals.finetuned.loss is not None:
            metrics.eval_loss = _round(evals.finetuned.loss)
        if evals is not None and evals.baseline is not None and evals.baseline.loss is not None:
            metrics.baseline_eval_loss = _round(evals.baseline.loss)
        if summary.train_loss is not None:
            metrics.train_loss = _round(summary.train_loss)
        progress.step, progress.total_steps = summary.step, summary.total_steps
        status.trained_tokens = summary.trained_tokens
        if summary.model is not None:
            status.model = model_status(summary.model)
        status.checkpoints = merge_checkpoints(status.checkpoints, summary.checkpoints)[-max_checkpoints:]
        status.evaluation = evaluation_status(summary, spec)
    status.metrics = metrics
    status.progress = progress


def gate_result(summary: RunSummary, spec: FineTuneJobSpec) -> GateResult | None:
    """The gate's verdict: the trainer's, or judged here from the summary's evaluations (a trainer
    that predates the gate, or a summary trimmed to fit the termination message); None without a gate
    or without anything to judge."""
    gate = spec.evaluation.gate
    if gate is None:
        return None
    if summary.gate is not None:
        return summary.gate
    return judge_gate(gate, summary.eval) if summary.eval is not None else None


def evaluation_status(summary: RunSummary, spec: FineTuneJobSpec) -> EvaluationStatus | None:
    """status.evaluation: the key numbers of both models and the gate's verdict."""
    evals = summary.eval or Evaluations()
    base, tuned = evals.baseline, evals.finetuned
    verdict = gate_result(summary, spec)
    if tuned is None and verdict is None:
        return None
    metric = tuned.metric if tuned else None
    out = EvaluationStatus(
        eval_loss=_round(tuned.loss) if tuned else None,
        baseline_eval_loss=_round(base.loss) if base else None,
        perplexity=_round(tuned.perplexity) if tuned else None,
        baseline_perplexity=_round(base.perplexity) if base else None,
        generation_metric=metric,
        score=_round((tuned.scores or {}).get(metric)) if tuned and metric else None,
        baseline_score=_round((base.scores or {}).get(metric)) if base and metric else None,
        samples=tuned.samples if tuned else None,
    )
    if verdict is not None:
        out.result = GateOutcome.PASSED if verdict.passed else GateOutcome.FAILED
        out.metric, out.value, out.threshold = verdict.metric, _round(verdict.value), verdict.threshold
        out.baseline, out.must_beat_baseline = _round(verdict.baseline), verdict.must_beat_baseline
        out.reason, out.message = str(verdict.reason), verdict.message[:1024]
    return out
