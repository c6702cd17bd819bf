"""What a pod's state means for its FineTuneJob: the retry policy.

`observe_pod` pulls the facts out of a pod as the API returns it (container state, exit code,
termination message, pod reason, scheduling condition); `classify_pod` turns them into an
Outcome: success, or a failure with a CamelCase reason and whether a new attempt can help.
Reasons, exit codes and retryability come from one table, `kubetune_api.protocol.FAILURES`,
which the trainer's exceptions use too. User errors are never retried.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubetune_api.protocol import (
    FAILURES,
    SIGTERM_EXIT_CODE,
    FailureInfo,
    FailureReason,
    PreflightReport,
    RunSummary,
    failure,
    failure_for_exit_code,
    parse_termination_message,
)

JSON = dict[str, Any]

IMAGE_PULL_REASONS = frozenset({"ImagePullBackOff", "ErrImagePull", "InvalidImageName"})
CONFIG_REASONS = frozenset({"CreateContainerConfigError", "CreateContainerError"})
PREEMPTION_REASONS = frozenset({"PreemptionByScheduler", "EvictionByEvictionAPI"})


@dataclass(frozen=True)
class PodObservation:
    """The facts about one pod that classification needs (extracted from a V1Pod dict)."""

    phase: str = "Pending"
    pod_reason: str | None = None  # e.g. Evicted, DeadlineExceeded, Preempting
    waiting_reason: str | None = None
    waiting_message: str | None = None
    terminated_reason: str | None = None  # OOMKilled, Error, Completed
    exit_code: int | None = None
    termination_message: str | None = None
    unschedulable_message: str | None = None
    disruption_reason: str | None = None  # DisruptionTarget condition reason (PreemptionByScheduler, ...)


@dataclass(frozen=True)
class Outcome:
    """A pod's (or a Job's) result. `reason` is a FailureReason, or a newer trainer's own string."""

    succeeded: bool
    reason: str
    message: str
    retryable: bool = False
    user_error: bool = False
    report: RunSummary | PreflightReport | None = None  # the termination message, parsed

    @classmethod
    def failed(cls, info: FailureInfo, message: str, report: RunSummary | PreflightReport | None = None) -> Outcome:
        return cls(False, info.reason, message, info.retryable, info.user_error, report)


def observe_pod(pod: JSON) -> PodObservation:
    """Pull the relevant facts out of a pod as the API returns it (camelCase dict)."""
    status = pod.get("status") or {}
    container: JSON = next(iter(status.get("containerStatuses") or []), {})
    state = container.get("state") or {}
    waiting, terminated = state.get("waiting") or {}, state.get("terminated") or {}
    conditions = status.get("conditions") or []
    unschedulable = next(
        (c for c in conditions if c.get("type") == "PodScheduled" and c.get("reason") == "Unschedulable"), None
    )
    disruption = next(
        (c for c in conditions if c.get("type") == "DisruptionTarget" and c.get("status") == "True"), None
    )
    return PodObservation(
        phase=status.get("phase", "Pending"),
        pod_reason=status.get("reason"),
        waiting_reason=waiting.get("reason"),
        waiting_message=waiting.get("message"),
        terminated_reason=terminated.get("reason"),
        exit_code=terminated.get("exitCode"),
        termination_message=terminated.get("message"),
        unschedulable_message=unschedulable.get("message") if unschedulable else None,
        disruption_reason=disruption.get("reason") if disruption else None,
    )


def classify_pod(obs: PodObservation) -> Outcome | None:
    """What this pod means for the job; None while it is simply progressing (or unschedulable,
    which is a condition, not a failure: a GPU may free up)."""
    report = parse_termination_message(obs.termination_message)
    summary = report if isinstance(report, RunSummary) else None
    reported = summary.message if summary and summary.message else None
    message = str(reported or obs.waiting_message or obs.termination_message or "")[:1024]

    if obs.waiting_reason in IMAGE_PULL_REASONS:
        return Outcome.failed(FAILURES[FailureReason.IMAGE_PULL_BACK_OFF], message or "cannot pull the trainer image")
    if obs.waiting_reason in CONFIG_REASONS:
        return Outcome.failed(FAILURES[FailureReason.INVALID_SPEC], message or obs.waiting_reason or "")
    if obs.pod_reason == "DeadlineExceeded":
        return Outcome.failed(FAILURES[FailureReason.DEADLINE_EXCEEDED], "activeDeadlineSeconds reached")
    if obs.phase == "Succeeded" or (obs.exit_code == 0 and obs.terminated_reason == "Completed"):
        return Outcome(True, "Succeeded", "training finished", report=report)
    if obs.phase != "Failed" and obs.exit_code is None:
        return None

    if obs.pod_reason == "Evicted" or obs.disruption_reason in PREEMPTION_REASONS:
        return Outcome.failed(FAILURES[FailureReason.PREEMPTED], message or "the pod was evicted", summary)
    if obs.terminated_reason == "OOMKilled":
        # Deterministic for a given spec: retrying would burn the same GPU hours again.
        info = FAILURES[FailureReason.OOM_KILLED]
        return Outcome.failed(info, "the trainer ran out of host memory; raise resources.memory")
    return _by_exit_code(obs.exit_code, summary, message)


def _by_exit_code(code: int | None, summary: RunSummary | None, message: str) -> Outcome:
    """The trainer classified its own failure: its exit code (and the reason it reported) decide."""
    by_code = failure_for_exit_code(code) if code is not None else None
    if by_code is None:
        # Unknown crash: the trainer never got to classify it, so give it another attempt.
        return Outcome.failed(FAILURES[FailureReason.CRASHED], message or f"exit code {code}")
    if by_code.reason is FailureReason.KILLED:
        return Outcome.failed(by_code, message or "the trainer was killed (SIGKILL)")
    reported = str(summary.reason) if summary and summary.reason else None
    if code == SIGTERM_EXIT_CODE:
        # Stopped after a checkpoint (eviction, drain, suspension): always worth resuming.
        reason = reported or by_code.reason
        return Outcome(False, reason, message or "stopped by SIGTERM", retryable=True, report=summary)
    # The exit code decides user or infrastructure error (as its range always has); the reason
    # the trainer reported names the failure and can only rule a retry out (GPUOOM on exit 20
    # is still not worth another attempt). A newer trainer's unknown reason is kept as it is.
    info = failure(reported) if reported else None
    retryable = by_code.retryable and (info.retryable if info is not None else True)
    return Outcome(False, reported or by_code.reason, message, retryable, by_code.user_error, summary)
