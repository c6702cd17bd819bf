"""Pure reconcile: from what is observed about a FineTuneJob to what should happen next.

`decide(snapshot, settings)` reads the job (spec and status), its children (Job and Pod
views from the operator's indices) and the trainer's latest /progress, and returns a Plan:
the new status, the children to create, suspend or delete, the Events to post, and when to
look again. It does no I/O and reads no clock, so every transition is a unit test.

It is level-triggered: the same snapshot always gives the same plan, and every plan is safe
to apply twice (children have deterministic names, so a second create is a 409). That is
what makes operator restarts and lagging watch streams harmless.

Lifecycle:
    Pending ─► Validating (CPU preflight Job) ─► Queued | Suspended ─► Initializing
      ─► Running ─► Exporting ─► Succeeded
    any ─► Failed (reason) ; infrastructure failures ─► a new attempt (resumes from the
    latest checkpoint) while attempts <= backoffLimit ; deletion ─► Cancelled
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubetune_api.spec import FineTuneJobSpec
from kubetune_operator.settings import OperatorSettings
from kubetune_operator.status import TERMINAL, Outcome, Phase, classify_pod, condition_is, eta_text, set_condition
from kubetune_operator.validation import parse_spec, validate
from kubetune_operator.views import JobView, PodView

JSON = dict[str, Any]

# Fields that may change while a job runs (as for batch/v1 Job); everything else is frozen
# at acceptance: a running job keeps training what it was accepted with.
MUTABLE_FIELDS = frozenset({"suspend", "backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished"})
_MUTABLE_ATTRIBUTES = [name for name, info in FineTuneJobSpec.model_fields.items() if info.alias in MUTABLE_FIELDS]

_TRAINER_PHASES = {
    "Initializing": Phase.INITIALIZING,
    "Staging": Phase.INITIALIZING,
    "Preparing": Phase.INITIALIZING,
    "Running": Phase.RUNNING,
    "Checkpointing": Phase.RUNNING,
    "Exporting": Phase.EXPORTING,
    "Done": Phase.EXPORTING,
}


@dataclass(frozen=True)
class Snapshot:
    """Everything decide() may look at."""

    name: str
    namespace: str
    generation: int
    spec: JSON
    status: JSON
    jobs: tuple[JobView, ...] = ()
    pods: tuple[PodView, ...] = ()
    progress: JSON | None = None
    now: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Plan:
    status: JSON
    spec: FineTuneJobSpec | None = None  # what decide() acted on: the accepted spec with live mutable fields
    create_preflight: bool = False
    create_attempt: int | None = None
    attempt_deadline_seconds: int | None = None
    suspend: dict[str, bool] = field(default_factory=dict)
    delete_jobs: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    delete_self: bool = False
    requeue_after: float | None = None


# -- small helpers -------------------------------------------------------------------------------


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _round(value: Any, digits: int = 4) -> float | None:
    return round(float(value), digits) if isinstance(value, int | float) else None


def accepted_spec(status: JSON) -> FineTuneJobSpec | None:
    raw = status.get("acceptedSpec")
    if not isinstance(raw, dict):
        return None
    spec, _ = parse_spec(raw)
    return spec


def dump_spec(spec: FineTuneJobSpec) -> JSON:
    return spec.model_dump(by_alias=True, mode="json", exclude_none=True)


class _Draft:
    """The status being written, with the Events that explain each change."""

    def __init__(self, snapshot: Snapshot, settings: OperatorSettings) -> None:
        self.snapshot = snapshot
        self.settings = settings
        self.now = iso(snapshot.now)
        self.old_phase = snapshot.status.get("phase")
        self.status: JSON = copy.deepcopy(snapshot.status)
        self.status["observedGeneration"] = snapshot.generation
        self.plan = Plan(status=self.status, requeue_after=settings.poll_interval_seconds)

    @property
    def conditions(self) -> list[JSON]:
        return list(self.status.get("conditions") or [])

    def condition(self, type_: str, ok: bool, reason: str, message: str) -> bool:
        """Set a condition; True when its status flipped (worth an Event)."""
        before = next((c for c in self.conditions if c.get("type") == type_), None)
        self.status["conditions"] = set_condition(
            self.conditions, type_, ok, reason, message, self.snapshot.generation, self.now
        )
        return before is None or before.get("status") != ("True" if ok else "False")

    def clear_condition(self, type_: str, reason: str, message: str) -> None:
        if any(c.get("type") == type_ for c in self.conditions):
            self.condition(type_, False, reason, message)

    def event(self, type_: str, reason: str, message: str) -> None:
        self.plan.events.append(Event(type_, reason, message[:1024]))

    def phase(self, phase: Phase, message: str) -> None:
        self.status["phase"] = str(phase)
        self.status["message"] = message
        if self.old_phase != phase:
            self.event("Normal", str(phase), message)

    def fail(self, reason: str, message: str, exit_code: int | None = None) -> Plan:
        self.status["phase"] = str(Phase.FAILED)
        self.status["message"] = f"{reason}: {message}"
        self.status["error"] = {"reason": reason, "message": message[:4096]} | (
            {"exitCode": exit_code} if exit_code is not None else {}
        )
        self.status.setdefault("completionTime", self.now)
        self.condition("Failed", True, reason, message)
        self.clear_condition("Running", reason, "the job failed")
        self.event("Warning", reason, message)
        return self.finish_terminal()

    def finish_terminal(self) -> Plan:
        self.plan.requeue_after = _ttl_remaining(self.snapshot, self.status)
        return self.plan


# -- decide --------------------------------------------------------------------------------------


def decide(snapshot: Snapshot, settings: OperatorSettings) -> Plan:
    draft = _Draft(snapshot, settings)
    if draft.old_phase in TERMINAL:
        return _after_finish(draft)
    spec = _admit(draft)
    if spec is None:
        return draft.plan
    draft.plan.spec = spec
    needs_preflight = spec.preflight.enabled and not condition_is(draft.conditions, "DataValidated")
    if needs_preflight and not _preflight(draft, spec):
        return draft.plan
    return _train(draft, spec)


def _after_finish(draft: _Draft) -> Plan:
    remaining = _ttl_remaining(draft.snapshot, draft.status)
    if remaining is not None and remaining <= 0:
        draft.plan.delete_self = True
        remaining = None
    draft.plan.requeue_after = remaining
    return draft.plan


def _ttl_remaining(snapshot: Snapshot, status: JSON) -> float | None:
    """Seconds until ttlSecondsAfterFinished deletes the job; None when it never will."""
    live, _ = parse_spec(snapshot.spec)
    accepted = accepted_spec(status)
    chosen = live or accepted
    ttl = (
        chosen.ttl_seconds_after_finished
        if chosen
        else FineTuneJobSpec.model_fields["ttl_seconds_after_finished"].default
    )
    finished = parse_time(status.get("completionTime"))
    if ttl is None or finished is None:
        return None
    return max(0.0, finished.timestamp() + ttl - snapshot.now.timestamp())


def _admit(draft: _Draft) -> FineTuneJobSpec | None:
    """The spec to act on: validated once, then frozen except for MUTABLE_FIELDS."""
    snapshot = draft.snapshot
    accepted = accepted_spec(draft.status)
    if accepted is None:
        spec, errors = validate(snapshot.spec)
        if spec is None:
            message = "; ".join(errors)
            draft.condition("SpecValid", False, "InvalidSpec", message)
            draft.fail("InvalidSpec", message)
            return None
        draft.status["acceptedSpec"] = dump_spec(spec)
        draft.status.setdefault("attempts", 0)
        draft.condition("SpecValid", True, "Valid", "the spec passed schema and semantic checks")
        draft.condition("SpecApplied", True, "Applied", f"generation {snapshot.generation} applied")
        return spec

    live, errors = parse_spec(snapshot.spec)
    if live is None:
        if draft.condition("SpecApplied", False, "InvalidChange", "; ".join(errors)):
            draft.event("Warning", "InvalidChange", "the edited spec is invalid and is ignored: " + "; ".join(errors))
        return accepted
    live_raw, accepted_raw = dump_spec(live), dump_spec(accepted)
    changed = sorted(
        key
        for key in set(live_raw) | set(accepted_raw)
        if key not in MUTABLE_FIELDS and live_raw.get(key) != accepted_raw.get(key)
    )
    if changed:
        fields = ", ".join(f"spec.{key}" for key in changed)
        message = f"{fields} cannot change after the job was accepted; the change is ignored (create a new FineTuneJob)"
        if draft.condition("SpecApplied", False, "ImmutableFieldChanged", message):
            draft.event("Warning", "ImmutableFieldChanged", message)
    else:
        draft.condition("SpecApplied", True, "Applied", f"generation {snapshot.generation} applied")
    return accepted.model_copy(update={name: getattr(live, name) for name in _MUTABLE_ATTRIBUTES})


# -- preflight -----------------------------------------------------------------------------------


def _latest(pods: list[PodView]) -> PodView | None:
    return max(pods, key=lambda p: p.created, default=None)


def _preflight(draft: _Draft, spec: FineTuneJobSpec) -> bool:
    """Run the CPU preflight; True once the data passed and training may start."""
    snapshot = draft.snapshot
    job = next((j for j in snapshot.jobs if j.component == "preflight"), None)
    if job is None:
        draft.plan.create_preflight = True
        draft.condition("DataValidated", False, "Validating", "the CPU preflight Job is checking the dataset")
        draft.phase(Phase.VALIDATING, "validating the dataset on CPU before any GPU is requested")
        return False
    pod = _latest([p for p in snapshot.pods if p.component == "preflight"])
    outcome = classify_pod(pod.observation) if pod else None
    if outcome is None and job.failed:
        outcome = Outcome(Phase.FAILED, job.failure_reason or "PreflightFailed", job.failure_message or "")
    if outcome is None:
        _note_scheduling(draft, pod)
        draft.phase(Phase.VALIDATING, "validating the dataset on CPU before any GPU is requested")
        return False
    if outcome.phase != Phase.SUCCEEDED:
        draft.condition("DataValidated", False, outcome.reason, outcome.message)
        exit_code = pod.observation.exit_code if pod else None
        draft.fail(outcome.reason, f"preflight: {outcome.message}", exit_code)
        return False
    report = preflight_status(outcome.summary, spec, draft.settings)
    draft.status["preflight"] = report
    message = (
        f"{report.get('trainRows', 0)} training rows, {report.get('trainTokens', 0)} tokens, "
        f"{report.get('estimatedSteps', 0)} steps planned"
    )
    draft.condition("DataValidated", True, "Validated", message)
    draft.event("Normal", "DataValidated", message)
    if report.get("memoryFit") == "MayNotFit":
        draft.event(
            "Warning",
            "MemoryMayNotFit",
            f"estimated {report['estimatedGpuMemoryBytes'] / 2**30:.1f} GiB per GPU exceeds "
            f"{draft.settings.gpu_memory_gib} GiB; lower batchSize or maxSeqLength, or enable gradientCheckpointing",
        )
    return True


def preflight_status(report: JSON, spec: FineTuneJobSpec, settings: OperatorSettings) -> JSON:
    """The preflight Job's termination message, as status.preflight (camelCase)."""
    data: JSON = report.get("data") or {}
    plan: JSON = report.get("plan") or {}
    memory: JSON = report.get("memory") or {}
    out: JSON = {
        "format": data.get("format"),
        "trainRows": data.get("train_rows"),
        "validationRows": data.get("validation_rows"),
        "trainTokens": data.get("train_tokens"),
        "trainableTokens": data.get("trainable_tokens"),
        "truncatedRows": data.get("truncated_rows"),
        "droppedRows": data.get("dropped_rows"),
        "packingEfficiency": _round(data.get("packing_efficiency"), 3),
        "epochs": plan.get("epochs"),
        "batchSize": plan.get("batch_size"),
        "estimatedSteps": plan.get("total_steps"),
    }
    per_gpu = memory.get("total_bytes")
    if isinstance(per_gpu, int | float) and spec.resources.gpus > 0:
        out["estimatedGpuMemoryBytes"] = int(per_gpu)
        out["memoryFit"] = "Fits" if per_gpu <= settings.gpu_memory_gib * 2**30 else "MayNotFit"
    return {key: value for key, value in out.items() if value is not None}


def _note_scheduling(draft: _Draft, pod: PodView | None) -> None:
    """Unschedulable is a condition, not a failure: a GPU may free up."""
    message = pod.observation.unschedulable_message if pod else None
    if message:
        if draft.condition("Unschedulable", True, "Unschedulable", message):
            draft.event("Warning", "Unschedulable", message)
    else:
        draft.clear_condition("Unschedulable", "Scheduled", "the pod was scheduled")


# -- training ------------------------------------------------------------------------------------


def _deadline_remaining(draft: _Draft, spec: FineTuneJobSpec) -> int | None:
    deadline = spec.active_deadline_seconds
    started = parse_time(draft.status.get("startTime"))
    if deadline is None:
        return None
    if started is None:
        return deadline
    return int(started.timestamp() + deadline - draft.snapshot.now.timestamp())


def _start_attempt(draft: _Draft, spec: FineTuneJobSpec, attempt: int) -> None:
    draft.plan.create_attempt = attempt
    remaining = _deadline_remaining(draft, spec)
    draft.plan.attempt_deadline_seconds = None if remaining is None else max(1, remaining)
    draft.status["attempts"] = attempt


def _train(draft: _Draft, spec: FineTuneJobSpec) -> Plan:
    snapshot = draft.snapshot
    jobs = {j.attempt: j for j in snapshot.jobs if j.component == "trainer" and j.attempt is not None}
    attempt = max([int(draft.status.get("attempts") or 0), *jobs])  # the index may be ahead of status
    if attempt == 0:
        _start_attempt(draft, spec, 1)
        _waiting_phase(draft, spec, suspended=spec.suspend or bool(spec.queue_name))
        return draft.plan
    draft.status["attempts"] = attempt
    job = jobs.get(attempt)
    if job is None:  # created but not observed yet, or deleted by someone: create (idempotent)
        _start_attempt(draft, spec, attempt)
        return draft.plan

    remaining = _deadline_remaining(draft, spec)
    if remaining is not None and remaining <= 0 and draft.status.get("startTime"):
        if not job.deleting:
            draft.plan.delete_jobs.append(job.name)
        return draft.fail(
            "DeadlineExceeded", f"activeDeadlineSeconds ({spec.active_deadline_seconds}s) passed since the start"
        )

    if _suspension(draft, spec, job):
        return draft.plan
    draft.status.setdefault("startTime", draft.now)
    if draft.condition("Admitted", True, "Admitted", f"trainer Job {job.name} is running"):
        draft.clear_condition("Suspended", "Resumed", "the trainer Job runs")

    pods = [p for p in snapshot.pods if p.job_name == job.name]
    _account_gpu_time(draft, spec, [p for p in snapshot.pods if p.component == "trainer"])
    outcome, pod = _attempt_outcome(job, pods)
    if outcome is None:
        return _progressing(draft, spec, job, pods)
    if outcome.phase == Phase.SUCCEEDED:
        return _succeeded(draft, spec, outcome)
    return _failed_attempt(draft, spec, job, attempt, outcome, pod, pods)


def _waiting_phase(draft: _Draft, spec: FineTuneJobSpec, suspended: bool) -> None:
    if spec.suspend:
        if draft.condition("Suspended", True, "Suspended", "spec.suspend is true"):
            draft.clear_condition("Running", "Suspended", "spec.suspend is true")
        draft.phase(Phase.SUSPENDED, "suspended: set spec.suspend to false to run")
    elif suspended and spec.queue_name:
        draft.condition("Admitted", False, "Queued", f"waiting for admission by Kueue LocalQueue {spec.queue_name}")
        draft.phase(Phase.QUEUED, f"queued in LocalQueue {spec.queue_name}")
    else:
        draft.phase(Phase.INITIALIZING, "starting the trainer")


def _suspension(draft: _Draft, spec: FineTuneJobSpec, job: JobView) -> bool:
    """Keep the Job's suspend in line with the spec; True while it is not running."""
    if spec.suspend and not job.suspended and not (job.complete or job.failed):
        draft.plan.suspend[job.name] = True
    if not spec.suspend and job.suspended and not spec.queue_name:
        draft.plan.suspend[job.name] = False  # Kueue owns suspend for queued Jobs; we never admit them
        draft.clear_condition("Suspended", "Resumed", "spec.suspend is false")
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
        if outcome is not None and outcome.phase == Phase.FAILED:
            return outcome, pod
    if job.failed:
        reason = job.failure_reason or "JobFailed"
        message = job.failure_message or f"the trainer Job failed ({reason})"
        return Outcome(Phase.FAILED, reason, message, retryable=reason != "DeadlineExceeded"), None
    successes = [(o, p) for o, p in outcomes if o is not None and o.phase == Phase.SUCCEEDED]
    if job.complete or (successes and len(successes) == len(latest)):
        rank0 = next((o for o, p in successes if p.index == 0), successes[0][0] if successes else None)
        return rank0 or Outcome(Phase.SUCCEEDED, "Succeeded", "training finished"), None
    return None, None


def _account_gpu_time(draft: _Draft, spec: FineTuneJobSpec, pods: list[PodView]) -> None:
    if spec.resources.gpus <= 0:
        return
    total = 0.0
    for pod in pods:
        start, end = parse_time(pod.started_at), parse_time(pod.finished_at) or draft.snapshot.now
        if start is not None:
            total += max(0.0, (end - start).total_seconds()) * spec.resources.gpus
    draft.status["gpuSeconds"] = max(int(total), int(draft.status.get("gpuSeconds") or 0))


def _progressing(draft: _Draft, spec: FineTuneJobSpec, job: JobView, pods: list[PodView]) -> Plan:
    rank0 = _latest([p for p in pods if p.index == 0])
    if rank0 is None or not rank0.running:
        _note_scheduling(draft, rank0)
        draft.phase(Phase.INITIALIZING, "waiting for the trainer pod to start")
        return draft.plan
    draft.clear_condition("Unschedulable", "Scheduled", "the trainer pod was scheduled")
    progress = draft.snapshot.progress
    if not progress:
        if draft.old_phase in {Phase.RUNNING, Phase.EXPORTING}:
            return draft.plan  # a missed poll (busy, or the process is exiting): no step backwards
        draft.condition("Running", True, "Started", f"trainer pod {rank0.name} is running")
        draft.phase(Phase.INITIALIZING, "the trainer is starting")
        return draft.plan
    apply_progress(draft.status, progress, draft.settings.max_checkpoints_in_status)
    step, total = int(progress.get("step") or 0), int(progress.get("totalSteps") or 0)
    trainer_phase = str(progress.get("phase") or "Running")
    phase = _TRAINER_PHASES.get(trainer_phase, Phase.RUNNING)
    if trainer_phase == "Evaluating":
        phase = Phase.RUNNING if step > 0 else Phase.INITIALIZING
    draft.condition("Running", True, "Training", f"step {step}/{total} ({trainer_phase})")
    _note_checkpoint(draft)
    draft.phase(phase, f"{trainer_phase.lower()}: step {step}/{total}")
    return draft.plan


def apply_progress(status: JSON, progress: JSON, max_checkpoints: int) -> None:
    """Copy the trainer's /progress into status.progress, status.metrics and checkpoints."""
    ratio = float(progress.get("progressRatio") or 0.0)
    eta = progress.get("etaSeconds")
    updated = progress.get("lastUpdateTime")
    status["progress"] = {
        key: value
        for key, value in {
            "percent": f"{ratio * 100:.0f}%",
            "step": progress.get("step"),
            "totalSteps": progress.get("totalSteps"),
            "epoch": _round(progress.get("epoch"), 3),
            "etaSeconds": None if eta is None else round(float(eta)),
            "eta": eta_text(None if eta is None else float(eta)),
            "tokensPerSecond": _round(progress.get("tokensPerSecond"), 1),
            "lastUpdateTime": iso(datetime.fromtimestamp(float(updated), UTC)) if updated else None,
        }.items()
        if value is not None
    }
    metrics = dict(status.get("metrics") or {})
    for source, target in (
        ("trainLoss", "trainLoss"),
        ("evalLoss", "evalLoss"),
        ("baselineEvalLoss", "baselineEvalLoss"),
        ("learningRate", "learningRate"),
    ):
        value = _round(progress.get(source), 6 if source == "learningRate" else 4)
        if value is not None:
            metrics[target] = value
    status["metrics"] = metrics
    if progress.get("trainedTokens") is not None:
        status["trainedTokens"] = int(progress["trainedTokens"])
    status["checkpoints"] = merge_checkpoints(status.get("checkpoints") or [], progress.get("checkpoints") or [])[
        -max_checkpoints:
    ]


def merge_checkpoints(known: list[JSON], reported: list[JSON]) -> list[JSON]:
    """Union by step, oldest first; reported times (unix seconds) become RFC 3339."""
    by_step = {int(c["step"]): c for c in known if "step" in c}
    for checkpoint in reported:
        if "step" not in checkpoint or "uri" not in checkpoint:
            continue
        when = checkpoint.get("time")
        by_step[int(checkpoint["step"])] = {
            "step": int(checkpoint["step"]),
            "uri": str(checkpoint["uri"]),
            "time": iso(datetime.fromtimestamp(float(when), UTC)) if isinstance(when, int | float) else when,
        }
    return [by_step[step] for step in sorted(by_step)]


def _note_checkpoint(draft: _Draft) -> None:
    checkpoints = draft.status.get("checkpoints") or []
    if not checkpoints:
        return
    latest = checkpoints[-1]
    message = f"step {latest['step']}: {latest['uri']}"
    previous = next((c for c in draft.conditions if c.get("type") == "CheckpointSaved"), None)
    if previous is None or previous.get("message") != message:
        draft.condition("CheckpointSaved", True, "Saved", message)
        draft.event("Normal", "CheckpointSaved", message)


def _succeeded(draft: _Draft, spec: FineTuneJobSpec, outcome: Outcome) -> Plan:
    summary = outcome.summary
    status = draft.status
    artifacts = {"outputUri": spec.output.uri}
    for key in ("adapterUri", "manifestUri"):
        if summary.get(key):
            artifacts[key] = summary[key]
    status["artifacts"] = artifacts
    metrics = dict(status.get("metrics") or {})
    evals: JSON = summary.get("eval") or {}
    for source, target in (("finetuned", "evalLoss"), ("baseline", "baselineEvalLoss")):
        loss = _round((evals.get(source) or {}).get("loss"))
        if loss is not None:
            metrics[target] = loss
    if _round(summary.get("trainLoss")) is not None:
        metrics["trainLoss"] = _round(summary.get("trainLoss"))
    status["metrics"] = metrics
    step, total = summary.get("step"), summary.get("totalSteps")
    progress = dict(status.get("progress") or {})
    progress.update({"percent": "100%", "etaSeconds": 0, "eta": "0s"})
    if step is not None:
        progress["step"] = step
    if total is not None:
        progress["totalSteps"] = total
    status["progress"] = progress
    if summary.get("trainedTokens") is not None:
        status["trainedTokens"] = summary["trainedTokens"]
    status["completionTime"] = draft.now
    status.pop("error", None)
    adapter = artifacts.get("adapterUri", spec.output.uri)
    message = f"trained {step if step is not None else '?'} steps; adapter at {adapter}"
    if summary.get("alreadyComplete"):
        message = f"output already complete at {spec.output.uri}; nothing retrained"
    draft.condition("Complete", True, "Succeeded", message)
    draft.clear_condition("Running", "Completed", "training finished")
    draft.clear_condition("Unschedulable", "Completed", "training finished")
    draft.phase(Phase.SUCCEEDED, message)
    return draft.finish_terminal()


def _failed_attempt(
    draft: _Draft,
    spec: FineTuneJobSpec,
    job: JobView,
    attempt: int,
    outcome: Outcome,
    pod: PodView | None,
    pods: list[PodView],
) -> Plan:
    exit_code = pod.observation.exit_code if pod else None
    # Stop what still runs (the other ranks, or a pod stuck pulling its image); a Job whose
    # pods have all ended is kept, so their logs stay readable.
    still_running = any(not p.finished and not p.deleting for p in pods)
    if still_running and not job.deleting:
        draft.plan.delete_jobs.append(job.name)
    if outcome.retryable and attempt <= spec.backoff_limit:
        checkpoints = draft.status.get("checkpoints") or []
        resume = f"resuming from step {checkpoints[-1]['step']}" if checkpoints else "from the start"
        message = (
            f"attempt {attempt} failed ({outcome.reason}: {outcome.message}); "
            f"attempt {attempt + 1} of {spec.backoff_limit + 1} starts, {resume}"
        )
        draft.status["lastFailure"] = {"attempt": attempt, "reason": outcome.reason, "message": outcome.message[:1024]}
        draft.condition("Running", False, outcome.reason, message)
        draft.event("Warning", "Retrying", message)
        _start_attempt(draft, spec, attempt + 1)
        draft.phase(Phase.INITIALIZING, f"retrying: {resume}")
        return draft.plan
    if outcome.retryable:
        return draft.fail(
            "BackoffLimitExceeded",
            f"{attempt} attempts failed (backoffLimit {spec.backoff_limit}); the last: {outcome.reason}: "
            f"{outcome.message}",
            exit_code,
        )
    return draft.fail(outcome.reason, outcome.message or outcome.reason, exit_code)


# -- helpers for the effectful side ----------------------------------------------------------------


def progress_url(status: JSON, pods: tuple[PodView, ...]) -> str | None:
    """The current attempt's rank-0 trainer /progress endpoint, while it runs."""
    attempt = int(status.get("attempts") or 0)
    candidates = [
        p
        for p in pods
        if p.component == "trainer" and p.attempt == attempt and p.index == 0 and p.running and p.ip and p.metrics_port
    ]
    pod = _latest(candidates)
    if pod is None:
        return None
    host = f"[{pod.ip}]" if pod.ip and ":" in pod.ip else pod.ip
    return f"http://{host}:{pod.metrics_port}/progress"


def merge_patch(old: JSON, new: JSON) -> JSON:
    """The RFC 7386 merge patch that turns `old` into `new` (lists are replaced whole)."""
    patch: JSON = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            nested = merge_patch(before, value)
            if nested:
                patch[key] = nested
        elif key not in old or before != value:
            patch[key] = value
    return patch
