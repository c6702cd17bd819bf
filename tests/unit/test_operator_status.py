"""Pure status logic: conditions, and the table of pod states -> phase / reason / retry."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubetune_operator.status import (
    Outcome,
    Phase,
    PodObservation,
    classify_pod,
    condition_is,
    eta_text,
    observe_pod,
    set_condition,
)

T0, T1 = "2026-11-22T10:00:00Z", "2026-11-22T10:05:00Z"


def test_set_condition_moves_transition_time_only_when_status_flips() -> None:
    conditions = set_condition([], "SpecValid", True, "Valid", "ok", 1, T0)
    again = set_condition(conditions, "SpecValid", True, "StillValid", "ok", 2, T1)
    [c] = again
    assert c["lastTransitionTime"] == T0 and c["reason"] == "StillValid" and c["observedGeneration"] == 2
    flipped = set_condition(again, "SpecValid", False, "InvalidSpec", "bad", 3, T1)
    assert flipped[0]["lastTransitionTime"] == T1 and flipped[0]["status"] == "False"
    assert condition_is(conditions, "SpecValid") and not condition_is(flipped, "SpecValid")


def test_set_condition_is_pure_and_ordered() -> None:
    before: list[dict[str, Any]] = []
    after = set_condition(
        set_condition(before, "Running", True, "Started", "", 1, T0), "SpecValid", True, "Ok", "", 1, T0
    )
    assert before == [] and [c["type"] for c in after] == ["SpecValid", "Running"]


def term(reason: str, message: str = "x") -> str:
    return json.dumps({"status": "Failed", "reason": reason, "message": message})


# (observation, phase, reason, retryable, user_error); None = still progressing
POD_TABLE: list[tuple[str, PodObservation, tuple[Phase, str, bool, bool] | None]] = [
    ("pending", PodObservation(), None),
    ("unschedulable-is-not-a-failure", PodObservation(unschedulable_message="0/3 nodes have nvidia.com/gpu"), None),
    ("running", PodObservation(phase="Running"), None),
    ("image-pull", PodObservation(waiting_reason="ImagePullBackOff"), (Phase.FAILED, "ImagePullBackOff", False, True)),
    ("err-image-pull", PodObservation(waiting_reason="ErrImagePull"), (Phase.FAILED, "ImagePullBackOff", False, True)),
    (
        "missing-secret",
        PodObservation(waiting_reason="CreateContainerConfigError"),
        (Phase.FAILED, "InvalidSpec", False, True),
    ),
    (
        "succeeded",
        PodObservation(phase="Succeeded", exit_code=0, terminated_reason="Completed"),
        (Phase.SUCCEEDED, "Succeeded", False, False),
    ),
    (
        "dataset-invalid",
        PodObservation(phase="Failed", exit_code=12, termination_message=term("DatasetInvalid")),
        (Phase.FAILED, "DatasetInvalid", False, True),
    ),
    (
        "s3-denied",
        PodObservation(phase="Failed", exit_code=15, termination_message=term("S3AccessDenied")),
        (Phase.FAILED, "S3AccessDenied", False, True),
    ),
    (
        "storage-5xx",
        PodObservation(phase="Failed", exit_code=21, termination_message=term("StorageError")),
        (Phase.FAILED, "StorageError", True, False),
    ),
    (
        "gpu-oom-not-retried",
        PodObservation(phase="Failed", exit_code=22, termination_message=term("GPUOOM")),
        (Phase.FAILED, "GPUOOM", False, False),
    ),
    (
        "host-oom",
        PodObservation(phase="Failed", exit_code=137, terminated_reason="OOMKilled"),
        (Phase.FAILED, "OOMKilled", False, False),
    ),
    (
        "sigterm-checkpointed",
        PodObservation(phase="Failed", exit_code=143, termination_message=term("Preempted")),
        (Phase.FAILED, "Preempted", True, False),
    ),
    ("evicted", PodObservation(phase="Failed", pod_reason="Evicted"), (Phase.FAILED, "Preempted", True, False)),
    (
        "preempted-by-scheduler",
        PodObservation(phase="Failed", exit_code=143, disruption_reason="PreemptionByScheduler"),
        (Phase.FAILED, "Preempted", True, False),
    ),
    (
        "deadline",
        PodObservation(phase="Failed", pod_reason="DeadlineExceeded"),
        (Phase.FAILED, "DeadlineExceeded", False, True),
    ),
    (
        "sigkill",
        PodObservation(phase="Failed", exit_code=137, terminated_reason="Error"),
        (Phase.FAILED, "Killed", True, False),
    ),
    (
        "unknown-crash",
        PodObservation(phase="Failed", exit_code=1, terminated_reason="Error"),
        (Phase.FAILED, "Crashed", True, False),
    ),
    (
        "user-error-without-message",
        PodObservation(phase="Failed", exit_code=11),
        (Phase.FAILED, "InvalidSpec", False, True),
    ),
]


@pytest.mark.parametrize(
    ("observation", "expected"), [(o, e) for _, o, e in POD_TABLE], ids=[i for i, _, _ in POD_TABLE]
)
def test_pod_state_table(observation: PodObservation, expected: tuple[Phase, str, bool, bool] | None) -> None:
    outcome = classify_pod(observation)
    if expected is None:
        assert outcome is None
        return
    assert isinstance(outcome, Outcome)
    assert (outcome.phase, outcome.reason, outcome.retryable, outcome.user_error) == expected
    assert not (outcome.retryable and outcome.user_error), "user errors are never retried"


def test_termination_message_summary_and_message_are_kept() -> None:
    outcome = classify_pod(
        PodObservation(
            phase="Failed", exit_code=12, termination_message=term("DatasetInvalid", "train.jsonl line 3: bad")
        )
    )
    assert outcome is not None and "train.jsonl line 3" in outcome.message
    assert outcome.summary["reason"] == "DatasetInvalid"


def test_observe_pod_reads_the_api_shape() -> None:
    pod = {
        "status": {
            "phase": "Failed",
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"},
            ],
            "containerStatuses": [
                {"state": {"terminated": {"exitCode": 143, "reason": "Error", "message": term("Preempted")}}}
            ],
        }
    }
    obs = observe_pod(pod)
    assert (obs.phase, obs.exit_code, obs.disruption_reason) == ("Failed", 143, "PreemptionByScheduler")
    pending = observe_pod(
        {
            "status": {
                "conditions": [
                    {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "no gpu"}
                ]
            }
        }
    )
    assert pending.unschedulable_message == "no gpu"


@pytest.mark.parametrize(
    ("seconds", "text"), [(None, None), (5, "5s"), (59.6, "1m"), (125, "2m"), (3 * 3600 + 300, "3h05m")]
)
def test_eta_text(seconds: float | None, text: str | None) -> None:
    assert eta_text(seconds) == text
