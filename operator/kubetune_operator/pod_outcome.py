"""Pure status logic: metav1.Conditions, and what a pod's state means for the job.

`classify_pod` turns what the kubelet reports (container state, exit code, termination
message, pod reason, scheduling condition) into an Outcome: a phase, a CamelCase reason,
a message, and whether a retry can help. User errors are never retried.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

JSON = dict[str, Any]


class Phase(StrEnum):
    PENDING = "Pending"
    VALIDATING = "Validating"
    QUEUED = "Queued"
    SUSPENDED = "Suspended"
    INITIALIZING = "Initializing"
    RUNNING = "Running"
    EXPORTING = "Exporting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"


TERMINAL = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED})

CONDITION_TYPES = (
    "SpecValid",
    "DataValidated",
    "Admitted",
    "Running",
    "CheckpointSaved",
    "Complete",
    "Failed",
    "Suspended",
    "Unschedulable",
)


def set_condition(
    conditions: list[JSON],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    observed_generation: int,
    now: str,
) -> list[JSON]:
    """Return a new list with `type_` set. lastTransitionTime moves only when status flips."""
    value = "True" if status else "False"
    previous = next((c for c in conditions if c.get("type") == type_), None)
    transition = previous["lastTransitionTime"] if previous and previous.get("status") == value else now
    updated = {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message[:32768],
        "observedGeneration": observed_generation,
        "lastTransitionTime": transition,
    }
    others = [c for c in conditions if c.get("type") != type_]
    order = {t: i for i, t in enumerate(CONDITION_TYPES)}
    return sorted([*others, updated], key=lambda c: order.get(str(c.get("type")), len(order)))


def condition_is(conditions: list[JSON], type_: str) -> bool:
    return any(c.get("type") == type_ and c.get("status") == "True" for c in conditions)


# -- pod outcomes ----------------------------------------------------------------------------------

USER_ERROR_CODES = range(10, 20)
INFRA_ERROR_CODES = range(20, 30)
SIGTERM_EXIT = 143
SIGKILL_EXIT = 137

IMAGE_PULL_REASONS = frozenset({"ImagePullBackOff", "ErrImagePull", "InvalidImageName"})
CONFIG_REASONS = frozenset({"CreateContainerConfigError", "CreateContainerError"})


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
    phase: Phase
    reason: str
    message: str
    retryable: bool = False
    user_error: bool = False
    summary: JSON = field(default_factory=dict)


def parse_termination_message(text: str | None) -> JSON:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


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
    summary = parse_termination_message(obs.termination_message)
    message = str(summary.get("message") or obs.waiting_message or obs.termination_message or "")[:1024]

    if obs.waiting_reason in IMAGE_PULL_REASONS:
        return Outcome(Phase.FAILED, "ImagePullBackOff", message or "cannot pull the trainer image", user_error=True)
    if obs.waiting_reason in CONFIG_REASONS:
        return Outcome(Phase.FAILED, "InvalidSpec", message or obs.waiting_reason or "", user_error=True)
    if obs.pod_reason == "DeadlineExceeded":
        return Outcome(Phase.FAILED, "DeadlineExceeded", "activeDeadlineSeconds reached", user_error=True)
    if obs.phase == "Succeeded" or (obs.exit_code == 0 and obs.terminated_reason == "Completed"):
        return Outcome(Phase.SUCCEEDED, "Succeeded", "training finished", summary=summary)
    if obs.phase != "Failed" and obs.exit_code is None:
        return None

    if obs.pod_reason == "Evicted" or obs.disruption_reason in {"PreemptionByScheduler", "EvictionByEvictionAPI"}:
        return Outcome(Phase.FAILED, "Preempted", message or "the pod was evicted", retryable=True, summary=summary)
    if obs.terminated_reason == "OOMKilled":
        # Deterministic for a given spec: retrying would burn the same GPU hours again.
        return Outcome(Phase.FAILED, "OOMKilled", "the trainer ran out of host memory; raise resources.memory")
    code = obs.exit_code
    reason = str(summary.get("reason") or "")
    if code == SIGTERM_EXIT:
        return Outcome(Phase.FAILED, reason or "Preempted", message or "stopped by SIGTERM", retryable=True)
    if code is not None and code in USER_ERROR_CODES:
        return Outcome(Phase.FAILED, reason or "InvalidSpec", message, user_error=True, summary=summary)
    if code is not None and code in INFRA_ERROR_CODES:
        retryable = reason != "GPUOOM"  # the same batch on the same GPU runs out of memory again
        return Outcome(Phase.FAILED, reason or "InfrastructureError", message, retryable=retryable, summary=summary)
    if code == SIGKILL_EXIT:
        return Outcome(Phase.FAILED, "Killed", message or "the trainer was killed (SIGKILL)", retryable=True)
    # Unknown crash: the trainer never got to classify it, so give it another attempt.
    return Outcome(Phase.FAILED, "Crashed", message or f"exit code {code}", retryable=True)


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
