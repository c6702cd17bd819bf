"""Pure decisions: from what is observed about a FineTuneJob to what should happen next.

`decide(snapshot, settings)` reads the job (spec and typed status), its children (Job and Pod
views from the operator's indices) and the trainer's latest ProgressReport, and returns a
Decision: the new status, the children to create, suspend or delete, the Events to post, and
when to look again. It does no I/O and reads no clock, so every transition is a unit test.

It is level-triggered: the same snapshot always gives the same decision, and every decision is
safe to apply twice (children have deterministic names, so a second create is a 409). That is
what makes operator restarts and lagging watch streams harmless.

Lifecycle:
    Pending ─► Validating (CPU preflight Job) ─► Queued | Suspended ─► Initializing
      ─► Running ─► Exporting ─► Succeeded
    any ─► Failed (reason) ; infrastructure failures ─► a new attempt (resumes from the
    latest checkpoint) while attempts <= backoffLimit ; spec.cancel or deletion ─► Cancelled
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from kubetune_api.protocol import FailureReason, PreflightReport, ProgressReport, RunSummary, data_quality_failure
from kubetune_api.spec import FineTuneJobSpec
from kubetune_api.status import (
    TERMINAL_PHASES,
    USER_CANCELLED,
    ConditionType,
    ErrorStatus,
    FineTuneJobStatus,
    GateOutcome,
    LastFailureStatus,
    MemoryFit,
    Phase,
)
from kubetune_operator.conditions import set_condition
from kubetune_operator.pod_outcome import Outcome, classify_pod
from kubetune_operator.settings import OperatorSettings
from kubetune_operator.status_from_reports import (
    apply_progress,
    apply_summary,
    fit_message,
    job_phase,
    model_status,
    preflight_status,
)
from kubetune_operator.validation import parse_spec, validate
from kubetune_operator.views import JobView, PodView, latest_pod

JSON = dict[str, Any]
C = ConditionType

# Fields that may change while a job runs (as for batch/v1 Job); everything else is frozen
# at acceptance: a running job keeps training what it was accepted with.
MUTABLE_FIELDS = frozenset({"suspend", "cancel", "backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished"})
_MUTABLE_ATTRIBUTES = [name for name, info in FineTuneJobSpec.model_fields.items() if info.alias in MUTABLE_FIELDS]


@dataclass(frozen=True)
class Snapshot:
    """Everything decide() may look at."""

    name: str
    namespace: str
    generation: int
    spec: JSON  # as the API holds it: it may be invalid, which decide() reports
    status: FineTuneJobStatus
    jobs: tuple[JobView, ...] = ()
    pods: tuple[PodView, ...] = ()
    progress: ProgressReport | None = None
    now: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Decision:
    """What one reconcile does: the status to write, and the actions that bring the cluster in line."""

    status: FineTuneJobStatus
    spec: FineTuneJobSpec | None = None  # what decide() acted on: the accepted spec with live mutable fields
    create_preflight: bool = False
    create_attempt: int | None = None
    attempt_deadline_seconds: int | None = None
    suspend: dict[str, bool] = field(default_factory=dict)
    delete_jobs: list[str] = field(default_factory=list)
    delete_children: bool = False  # every Job, Service and ConfigMap of the FineTuneJob (cancellation)
    events: list[Event] = field(default_factory=list)
    delete_self: bool = False
    requeue_after: float | None = None


class _Draft:
    """The status being written, with the Events that explain each change."""

    def __init__(self, snapshot: Snapshot, settings: OperatorSettings) -> None:
        self.snapshot = snapshot
        self.settings = settings
        self.now = snapshot.now
        self.old_phase = snapshot.status.phase
        self.status = snapshot.status.model_copy(deep=True)
        self.status.observed_generation = snapshot.generation
        self.decision = Decision(status=self.status, requeue_after=settings.poll_interval_seconds)

    def condition(self, type_: ConditionType, ok: bool | None, reason: str, message: str) -> bool:
        """Set a condition (`ok` None: Unknown); True when its status flipped (worth an Event)."""
        before = self.status.condition(type_)
        self.status.conditions = set_condition(
            self.status.conditions, type_, ok, reason, message, self.snapshot.generation, self.now
        )
        return before is None or before.status != ("Unknown" if ok is None else "True" if ok else "False")

    def clear_condition(self, type_: ConditionType, reason: str, message: str) -> None:
        if self.status.condition(type_) is not None:
            self.condition(type_, False, reason, message)

    def event(self, type_: str, reason: str, message: str) -> None:
        self.decision.events.append(Event(type_, reason, message[:1024]))

    def phase(self, phase: Phase, message: str) -> None:
        self.status.phase = phase
        self.status.message = message
        if self.old_phase != phase:
            self.event("Normal", str(phase), message)

    def fail(self, reason: str, message: str, exit_code: int | None = None) -> Decision:
        self.status.phase = Phase.FAILED
        self.status.message = f"{reason}: {message}"
        self.status.error = ErrorStatus(reason=reason, message=message[:4096], exit_code=exit_code)
        if self.status.completion_time is None:
            self.status.completion_time = self.now
        self.condition(C.FAILED, True, reason, message)
        self.clear_condition(C.RUNNING, reason, "the job failed")
        self.event("Warning", reason, message)
        return self.finish_terminal()

    def finish_terminal(self) -> Decision:
        self.decision.requeue_after = _ttl_remaining(self.snapshot, self.status)
        return self.decision


# -- decide --------------------------------------------------------------------------------------


def decide(snapshot: Snapshot, settings: OperatorSettings) -> Decision:
    draft = _Draft(snapshot, settings)
    if draft.old_phase in TERMINAL_PHASES:
        return _after_finish(draft)
    if _cancel_requested(snapshot):
        return _cancel(draft)
    spec = _admit(draft)
    if spec is None:
        return draft.decision
    draft.decision.spec = spec
    needs_preflight = spec.preflight.enabled and not draft.status.condition_is(C.DATA_VALIDATED)
    if needs_preflight and not _preflight(draft, spec):
        return draft.decision
    return _train(draft, spec)


def _after_finish(draft: _Draft) -> Decision:
    remaining = _ttl_remaining(draft.snapshot, draft.status)
    if remaining is not None and remaining <= 0:
        draft.decision.delete_self = True
        remaining = None
    draft.decision.requeue_after = remaining
    return draft.decision


def _cancel_requested(snapshot: Snapshot) -> bool:
    """spec.cancel, read from the live spec as the API holds it: a cancel must stop the job even
    when the same edit made another field invalid (the CRD schema guarantees it is a boolean)."""
    return snapshot.spec.get("cancel") is True


def _cancel(draft: _Draft) -> Decision:
    """Stop for good and keep the object: the trainer's pods get SIGTERM (and checkpoint) as their
    Job is deleted; status (checkpoints, artifacts, progress) stays as it was for people and the
    API to read, until ttlSecondsAfterFinished."""
    draft.decision.delete_children = True
    message = "spec.cancel is true: the job stopped and its Jobs, Services and ConfigMaps were removed"
    draft.status.phase = Phase.CANCELLED
    draft.status.message = message
    if draft.status.completion_time is None:
        draft.status.completion_time = draft.now
    draft.condition(C.CANCELLED, True, USER_CANCELLED, message)
    draft.clear_condition(C.RUNNING, USER_CANCELLED, "the job was cancelled")
    draft.clear_condition(C.SUSPENDED, USER_CANCELLED, "the job was cancelled")
    draft.clear_condition(C.UNSCHEDULABLE, USER_CANCELLED, "the job was cancelled")
    draft.event("Normal", USER_CANCELLED, message)
    return draft.finish_terminal()


def _ttl_remaining(snapshot: Snapshot, status: FineTuneJobStatus) -> float | None:
    """Seconds until ttlSecondsAfterFinished deletes the job; None when it never will."""
    live, _ = parse_spec(snapshot.spec)
    chosen = live or status.accepted_spec
    ttl = (
        chosen.ttl_seconds_after_finished
        if chosen
        else FineTuneJobSpec.model_fields["ttl_seconds_after_finished"].default
    )
    finished = status.completion_time
    if ttl is None or finished is None:
        return None
    return max(0.0, finished.timestamp() + ttl - snapshot.now.timestamp())


def _admit(draft: _Draft) -> FineTuneJobSpec | None:
    """The spec to act on: validated once, then frozen except for MUTABLE_FIELDS."""
    snapshot = draft.snapshot
    accepted = draft.status.accepted_spec
    if accepted is None:
        spec, errors = validate(snapshot.spec)
        if spec is None:
            message = "; ".join(errors)
            draft.condition(C.SPEC_VALID, False, FailureReason.INVALID_SPEC, message)
            draft.fail(FailureReason.INVALID_SPEC, message)
            return None
        draft.status.accepted_spec = spec
        draft.status.world_size = max(1, spec.resources.gpus) * spec.resources.nodes
        if draft.status.attempts is None:
            draft.status.attempts = 0
        draft.condition(C.SPEC_VALID, True, "Valid", "the spec passed schema and semantic checks")
        draft.condition(C.SPEC_APPLIED, True, "Applied", f"generation {snapshot.generation} applied")
        return spec

    live, errors = parse_spec(snapshot.spec)
    if live is None:
        if draft.condition(C.SPEC_APPLIED, False, "InvalidChange", "; ".join(errors)):
            draft.event("Warning", "InvalidChange", "the edited spec is invalid and is ignored: " + "; ".join(errors))
        return accepted
    live_raw, accepted_raw = _wire(live), _wire(accepted)
    changed = sorted(
        key
        for key in set(live_raw) | set(accepted_raw)
        if key not in MUTABLE_FIELDS and live_raw.get(key) != accepted_raw.get(key)
    )
    if changed:
        fields = ", ".join(f"spec.{key}" for key in changed)
        message = f"{fields} cannot change after the job was accepted; the change is ignored (create a new FineTuneJob)"
        if draft.condition(C.SPEC_APPLIED, False, "ImmutableFieldChanged", message):
            draft.event("Warning", "ImmutableFieldChanged", message)
    else:
        draft.condition(C.SPEC_APPLIED, True, "Applied", f"generation {snapshot.generation} applied")
    return accepted.model_copy(update={name: getattr(live, name) for name in _MUTABLE_ATTRIBUTES})


def _wire(spec: FineTuneJobSpec) -> JSON:
    return spec.model_dump(by_alias=True, mode="json", exclude_none=True)


# -- preflight -----------------------------------------------------------------------------------


def _preflight(draft: _Draft, spec: FineTuneJobSpec) -> bool:
    """Run the CPU preflight; True once the data passed and training may start."""
    snapshot = draft.snapshot
    job = next((j for j in snapshot.jobs if j.component == "preflight"), None)
    if job is None:
        draft.decision.create_preflight = True
        draft.condition(C.DATA_VALIDATED, False, "Validating", "the CPU preflight Job is checking the dataset")
        draft.phase(Phase.VALIDATING, "validating the dataset on CPU before any GPU is requested")
        return False
    pod = latest_pod([p for p in snapshot.pods if p.component == "preflight"])
    outcome = classify_pod(pod.observation) if pod else None
    if outcome is None and job.failed:
        reason = job.failure_reason or FailureReason.PREFLIGHT_FAILED
        outcome = Outcome(False, reason, job.failure_message or "", user_error=True)
    if outcome is None:
        _note_scheduling(draft, pod)
        draft.phase(Phase.VALIDATING, "validating the dataset on CPU before any GPU is requested")
        return False
    if not outcome.succeeded:
        draft.condition(C.DATA_VALIDATED, False, outcome.reason, outcome.message)
        exit_code = pod.observation.exit_code if pod else None
        draft.fail(outcome.reason, f"preflight: {outcome.message}", exit_code)
        return False
    # A success without a readable report (an older image, a truncated message): the data
    # passed, but there is nothing to show.
    report = (
        preflight_status(
            outcome.report, spec, draft.settings.gpu_memory_gib, draft.settings.gpu_price, draft.settings.currency
        )
        if isinstance(outcome.report, PreflightReport)
        else None
    )
    draft.status.preflight = report
    if isinstance(outcome.report, PreflightReport) and outcome.report.model is not None:
        draft.status.model = model_status(outcome.report.model)  # the architecture, before any GPU
    if not _data_quality(draft, spec):
        return False
    rows, tokens, steps = (report.train_rows, report.train_tokens, report.estimated_steps) if report else (0, 0, 0)
    message = f"{rows} training rows, {tokens} tokens, {steps} steps planned"
    draft.condition(C.DATA_VALIDATED, True, "Validated", message)
    draft.event("Normal", "DataValidated", message)
    fit = report.fit if report is not None else None
    if fit is not None:
        if fit.fits is False and spec.preflight.enforce_fit:
            draft.fail(
                FailureReason.WILL_NOT_FIT,
                f"{fit_message(fit)}; or set preflight.enforceFit: false to try anyway (the estimate is ±30%)",
            )
            return False
        draft.event("Normal", "FitPlanned", fit_message(fit))
        if fit.gpu_type is None:
            draft.event(
                "Warning",
                "CostUnknown",
                "resources.nodeSelector names no GPU type kubetune knows: no fit verdict, GPU-hours or cost "
                "(label the selector with nvidia.com/gpu.product, for example)",
            )
        elif fit.estimated_cost is None:
            draft.event(
                "Warning",
                "CostUnknown",
                f"the operator has no price for {fit.gpu_type} (chart value operator.gpuPrices): cost unknown",
            )
    if report is not None and report.memory_fit == MemoryFit.MAY_NOT_FIT:
        limit = f"{fit.gpu_type}'s memory" if fit and fit.gpu_type else f"{draft.settings.gpu_memory_gib} GiB"
        advice = (
            f"cheapest change that fits: {fit.suggestion}"
            if fit and fit.suggestion
            else "lower batchSize or maxSeqLength, or enable gradientCheckpointing or lora.quantization"
        )
        draft.event(
            "Warning",
            "MemoryMayNotFit",
            f"estimated {(report.estimated_gpu_memory_bytes or 0) / 2**30:.1f} GiB per GPU exceeds {limit}; {advice}",
        )
    return True


def _data_quality(draft: _Draft, spec: FineTuneJobSpec) -> bool:
    """One Warning Event per data-quality warning; False when preflight.failOnWarnings failed the job."""
    report = draft.status.preflight
    warnings = (report.warnings if report is not None else None) or []
    for warning in warnings:
        where = f" ({warning.example})" if warning.example and warning.example not in warning.message else ""
        draft.event("Warning", "DataQualityWarning", f"{warning.code}: {warning.message}{where}")
    if not spec.preflight.fail_on_warnings:
        return True
    if warnings:
        message = data_quality_failure([(w.code, w.message) for w in warnings])
    elif report is None or report.quality is None:
        # Asked to gate on the report, the operator cannot tell that there is nothing to gate on.
        message = (
            "preflight.failOnWarnings is true but the preflight left no data-quality report (a trainer image "
            "older than the operator?); use a trainer image that writes one, or set preflight.failOnWarnings: false"
        )
    else:
        return True
    draft.condition(C.DATA_VALIDATED, False, FailureReason.DATA_QUALITY_FAILED, message)
    draft.fail(FailureReason.DATA_QUALITY_FAILED, message)
    return False


def _note_scheduling(draft: _Draft, pod: PodView | None) -> None:
    """Unschedulable is a condition, not a failure: a GPU may free up."""
    message = pod.observation.unschedulable_message if pod else None
    if message:
        if draft.condition(C.UNSCHEDULABLE, True, "Unschedulable", message):
            draft.event("Warning", "Unschedulable", message)
    else:
        draft.clear_condition(C.UNSCHEDULABLE, "Scheduled", "the pod was scheduled")


# -- training ------------------------------------------------------------------------------------


def _deadline_remaining(draft: _Draft, spec: FineTuneJobSpec) -> int | None:
    deadline = spec.active_deadline_seconds
    started = draft.status.start_time
    if deadline is None:
        return None
    if started is None:
        return deadline
    return int(started.timestamp() + deadline - draft.now.timestamp())


def _start_attempt(draft: _Draft, spec: FineTuneJobSpec, attempt: int) -> bool:
    """Create the attempt's objects, once no pod of an earlier attempt still runs.

    A rank that outlives a failed attempt (stopping, or hung on a dead peer until its grace
    period ends) still holds its GPUs and its rendezvous port; the new attempt's pods would
    wait for those GPUs or meet the old rank. So a retry starts when the old pods are gone, as
    the Job controller's podReplacementPolicy: Failed does for a Job's own pods."""
    draft.status.attempts = attempt
    earlier = [p for p in draft.snapshot.pods if p.attempt is not None and p.attempt < attempt]
    lingering = [p.name for p in earlier if _alive(draft, p)]
    if lingering:
        draft.phase(Phase.INITIALIZING, f"retrying: attempt {attempt} waits for {', '.join(sorted(lingering))} to stop")
        return False
    draft.decision.create_attempt = attempt
    remaining = _deadline_remaining(draft, spec)
    draft.decision.attempt_deadline_seconds = None if remaining is None else max(1, remaining)
    return True


# A pod still there this long after its grace period is on a lost node: what it held is gone with
# the node, and waiting for the node to come back could take forever.
LOST_NODE_SLACK = timedelta(seconds=60)


def _alive(draft: _Draft, pod: PodView) -> bool:
    """A trainer pod that still runs, or is stopping within its grace period."""
    if pod.component != "trainer" or pod.finished:
        return False
    return pod.deletion_deadline is None or draft.now < pod.deletion_deadline + LOST_NODE_SLACK


def _train(draft: _Draft, spec: FineTuneJobSpec) -> Decision:
    snapshot = draft.snapshot
    jobs = {j.attempt: j for j in snapshot.jobs if j.component == "trainer" and j.attempt is not None}
    attempt = max([draft.status.attempts or 0, *jobs])  # the index may be ahead of status
    if attempt == 0:
        _start_attempt(draft, spec, 1)
        _waiting_phase(draft, spec, suspended=spec.suspend or bool(spec.queue_name))
        return draft.decision
    draft.status.attempts = attempt
    job = jobs.get(attempt)
    if job is None:  # created but not observed yet, or deleted by someone: create (idempotent)
        _start_attempt(draft, spec, attempt)
        return draft.decision

    remaining = _deadline_remaining(draft, spec)
    if remaining is not None and remaining <= 0 and draft.status.start_time is not None:
        if not job.deleting:
            draft.decision.delete_jobs.append(job.name)
        return draft.fail(
            FailureReason.DEADLINE_EXCEEDED,
            f"activeDeadlineSeconds ({spec.active_deadline_seconds}s) passed since the start",
        )

    if _suspension(draft, spec, job):
        return draft.decision
    if draft.status.start_time is None:
        draft.status.start_time = draft.now
    if draft.condition(C.ADMITTED, True, "Admitted", f"trainer Job {job.name} is running"):
        draft.clear_condition(C.SUSPENDED, "Resumed", "the trainer Job runs")

    pods = [p for p in snapshot.pods if p.job_name == job.name]
    _account_gpu_time(draft, spec, [p for p in snapshot.pods if p.component == "trainer"])
    outcome, pod = _attempt_outcome(job, pods)
    if outcome is None:
        return _progressing(draft, job, pods)
    if outcome.succeeded:
        return _succeeded(draft, spec, outcome)
    return _failed_attempt(draft, spec, job, attempt, outcome, pod, pods)


def _waiting_phase(draft: _Draft, spec: FineTuneJobSpec, suspended: bool) -> None:
    if spec.suspend:
        if draft.condition(C.SUSPENDED, True, "Suspended", "spec.suspend is true"):
            draft.clear_condition(C.RUNNING, "Suspended", "spec.suspend is true")
        draft.phase(Phase.SUSPENDED, "suspended: set spec.suspend to false to run")
    elif suspended and spec.queue_name:
        draft.condition(C.ADMITTED, False, "Queued", f"waiting for admission by Kueue LocalQueue {spec.queue_name}")
        draft.phase(Phase.QUEUED, f"queued in LocalQueue {spec.queue_name}")
    else:
        draft.phase(Phase.INITIALIZING, "starting the trainer")


def _suspension(draft: _Draft, spec: FineTuneJobSpec, job: JobView) -> bool:
    """Keep the Job's suspend in line with the spec; True while it is not running."""
    if spec.suspend and not job.suspended and not (job.complete or job.failed):
        draft.decision.suspend[job.name] = True
    if not spec.suspend and job.suspended and not spec.queue_name:
        draft.decision.suspend[job.name] = False  # Kueue owns suspend for queued Jobs; we never admit them
        draft.clear_condition(C.SUSPENDED, "Resumed", "spec.suspend is false")
        draft.phase(Phase.INITIALIZING, "resuming from the latest checkpoint")
        return True
    if spec.suspend or job.suspended:
        _waiting_phase(draft, spec, suspended=True)
        return True
    return False


def _attempt_outcome(job: JobView, pods: list[PodView]) -> tuple[Outcome | None, PodView | None]:
    """The attempt's result: a failure of any rank, success of all, or None while it runs.

    Pods being deleted (suspension, cancellation) are ignored unless the Job itself failed.
    """
    latest: dict[int, PodView] = {}
    for pod in sorted(pods, key=lambda p: p.created):
        latest[pod.index] = pod
    outcomes = [
        (classify_pod(pod.observation), pod) for pod in latest.values() if not (pod.deleting and not job.failed)
    ]
    for outcome, pod in outcomes:
        if outcome is not None and not outcome.succeeded:
            return outcome, pod
    if job.failed:
        reason = job.failure_reason or FailureReason.JOB_FAILED
        message = job.failure_message or f"the trainer Job failed ({reason})"
        return Outcome(False, reason, message, retryable=reason != FailureReason.DEADLINE_EXCEEDED), None
    successes = [(o, p) for o, p in outcomes if o is not None and o.succeeded]
    if job.complete or (successes and len(successes) == len(latest)):
        rank0 = next((o for o, p in successes if p.index == 0), successes[0][0] if successes else None)
        return rank0 or Outcome(True, "Succeeded", "training finished"), None
    return None, None


def _account_gpu_time(draft: _Draft, spec: FineTuneJobSpec, pods: list[PodView]) -> None:
    if spec.resources.gpus <= 0:
        return
    total = 0.0
    for pod in pods:
        start, end = pod.started_at, pod.finished_at or draft.now
        if start is not None:
            total += max(0.0, (end - start).total_seconds()) * spec.resources.gpus
    draft.status.gpu_seconds = max(int(total), draft.status.gpu_seconds or 0)


def _progressing(draft: _Draft, job: JobView, pods: list[PodView]) -> Decision:
    rank0 = latest_pod([p for p in pods if p.index == 0])
    if rank0 is None or not rank0.running:
        _note_scheduling(draft, rank0)
        draft.phase(Phase.INITIALIZING, "waiting for the trainer pod to start")
        return draft.decision
    draft.clear_condition(C.UNSCHEDULABLE, "Scheduled", "the trainer pod was scheduled")
    progress = draft.snapshot.progress
    if progress is None:
        if draft.old_phase in {Phase.RUNNING, Phase.EXPORTING}:
            return draft.decision  # a missed poll (busy, or the process is exiting): no step backwards
        draft.condition(C.RUNNING, True, "Started", f"trainer pod {rank0.name} is running")
        draft.phase(Phase.INITIALIZING, "the trainer is starting")
        return draft.decision
    apply_progress(draft.status, progress, draft.settings.max_checkpoints_in_status)
    step, total, trainer_phase = progress.step, progress.total_steps, str(progress.phase)
    draft.condition(C.RUNNING, True, "Training", f"step {step}/{total} ({trainer_phase})")
    _note_checkpoint(draft)
    _note_packing(draft)
    draft.phase(job_phase(progress), f"{trainer_phase.lower()}: step {step}/{total}")
    return draft.decision


def _note_checkpoint(draft: _Draft) -> None:
    if not draft.status.checkpoints:
        return
    latest = draft.status.checkpoints[-1]
    message = f"step {latest.step}: {latest.uri}"
    previous = draft.status.condition(C.CHECKPOINT_SAVED)
    if previous is None or previous.message != message:
        draft.condition(C.CHECKPOINT_SAVED, True, "Saved", message)
        draft.event("Normal", "CheckpointSaved", message)


def _note_packing(draft: _Draft) -> None:
    """A Warning, once, when the trainer had to pad because packed rows would have leaked."""
    model = draft.status.model
    if model is None or model.packing is not False or not model.packing_reason:
        return
    if draft.condition(C.PACKING_DISABLED, True, "PackedRowsLeak", model.packing_reason):
        draft.event("Warning", "PackingDisabled", model.packing_reason)


def _succeeded(draft: _Draft, spec: FineTuneJobSpec, outcome: Outcome) -> Decision:
    summary = outcome.report if isinstance(outcome.report, RunSummary) else None
    apply_summary(draft.status, summary, spec, draft.settings.max_checkpoints_in_status)
    _note_checkpoint(draft)  # a run too short for any poll to have seen it
    _note_packing(draft)
    draft.status.completion_time = draft.now
    draft.status.error = None
    adapter = (draft.status.artifacts.adapter_uri if draft.status.artifacts else None) or spec.output.uri
    message = f"trained {summary.step if summary else '?'} steps; adapter at {adapter}"
    if summary is not None and summary.already_complete:
        message = f"output already complete at {spec.output.uri}; nothing retrained"
    evaluation = draft.status.evaluation
    if evaluation is not None and evaluation.result == GateOutcome.FAILED:
        message += f"; the evaluation gate failed ({evaluation.reason})"
    draft.condition(C.COMPLETE, True, "Succeeded", message)
    draft.clear_condition(C.RUNNING, "Completed", "training finished")
    draft.clear_condition(C.UNSCHEDULABLE, "Completed", "training finished")
    draft.phase(Phase.SUCCEEDED, message)
    _note_evaluation(draft, spec)  # after Succeeded: the verdict is about the finished run's adapter
    return draft.finish_terminal()


def _note_evaluation(draft: _Draft, spec: FineTuneJobSpec) -> None:
    """EvaluationPassed from the gate's verdict, with an Event. A failed gate is a Warning, not a
    failure: the run worked and the adapter is published, it is just not good enough to ship."""
    if spec.evaluation.gate is None:
        return
    evaluation = draft.status.evaluation
    if evaluation is None or evaluation.result is None:
        message = "the trainer reported no evaluation to judge (no summary, or no validation rows evaluated)"
        if draft.condition(C.EVALUATION_PASSED, None, "NotReported", message):
            draft.event("Warning", "EvaluationNotReported", message)
        return
    passed = evaluation.result == GateOutcome.PASSED
    reason = evaluation.reason or str(evaluation.result)
    message = evaluation.message or reason
    if draft.condition(C.EVALUATION_PASSED, passed, reason, message):
        if passed:
            draft.event("Normal", "EvaluationPassed", message)
        else:
            adapter = (draft.status.artifacts.adapter_uri if draft.status.artifacts else None) or spec.output.uri
            draft.event(
                "Warning", "EvaluationGateFailed", f"{reason}: {message}; the adapter is published at {adapter}"
            )


def _failed_attempt(
    draft: _Draft,
    spec: FineTuneJobSpec,
    job: JobView,
    attempt: int,
    outcome: Outcome,
    pod: PodView | None,
    pods: list[PodView],
) -> Decision:
    exit_code = pod.observation.exit_code if pod else None
    # Stop what still runs (the other ranks, or a pod stuck pulling its image); a Job whose
    # pods have all ended is kept, so their logs stay readable.
    still_running = any(not p.finished and not p.deleting for p in pods)
    if still_running and not job.deleting:
        draft.decision.delete_jobs.append(job.name)
    if outcome.retryable and attempt <= spec.backoff_limit:
        checkpoints = draft.status.checkpoints
        resume = f"resuming from step {checkpoints[-1].step}" if checkpoints else "from the start"
        message = (
            f"attempt {attempt} failed ({outcome.reason}: {outcome.message}); "
            f"attempt {attempt + 1} of {spec.backoff_limit + 1} starts, {resume}"
        )
        draft.status.last_failure = LastFailureStatus(
            attempt=attempt, reason=outcome.reason, message=outcome.message[:1024]
        )
        draft.condition(C.RUNNING, False, outcome.reason, message)
        draft.event("Warning", "Retrying", message)
        if _start_attempt(draft, spec, attempt + 1):
            draft.phase(Phase.INITIALIZING, f"retrying: {resume}")
        return draft.decision
    if outcome.retryable:
        return draft.fail(
            FailureReason.BACKOFF_LIMIT_EXCEEDED,
            f"{attempt} attempts failed (backoffLimit {spec.backoff_limit}); the last: {outcome.reason}: "
            f"{outcome.message}",
            exit_code,
        )
    return draft.fail(outcome.reason, outcome.message or outcome.reason, exit_code)
