"""Pure status logic: conditions, and the table of pod states -> outcome / reason / retry."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from kubetune_api.protocol import RunSummary
from kubetune_api.status import Condition, ConditionType, FineTuneJobStatus
from kubetune_operator.conditions import set_condition
from kubetune_operator.pod_outcome import Outcome, PodObservation, classify_pod, observe_pod
from kubetune_operator.status_from_reports import eta_text

T0, T1 = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC), datetime(2026, 11, 22, 10, 5, 0, tzinfo=UTC)
C = ConditionType


def test_set_condition_moves_transition_time_only_when_status_flips() -> None:
    conditions = set_condition([], C.SPEC_VALID, True, "Valid", "ok", 1, T0)
    again = set_condition(conditions, C.SPEC_VALID, True, "StillValid", "ok", 2, T1)
    [c] = again
    assert c.last_transition_time == T0 and c.reason == "StillValid" and c.observed_generation == 2
    flipped = set_condition(again, C.SPEC_VALID, False, "InvalidSpec", "bad", 3, T1)
    assert flipped[0].last_transition_time == T1 and flipped[0].status == "False"
    assert FineTuneJobStatus(conditions=conditions).condition_is(C.SPEC_VALID)
    assert not FineTuneJobStatus(conditions=flipped).condition_is(C.SPEC_VALID)


def test_set_condition_is_pure_and_ordered() -> None:
    before: list[Condition] = []
    after = set_condition(
        set_condition(before, C.RUNNING, True, "Started", "", 1, T0), C.SPEC_VALID, True, "Ok", "", 1, T0
    )
    assert before == [] and [c.type for c in after] == ["SpecValid", "Running"]


def term(reason: str, message: str = "x") -> str:
    return json.dumps({"status": "Failed", "job": "ft", "reason": reason, "message": message})


OK, FAILED = True, False
# (observation, (succeeded, reason, retryable, user_error)); None = still progressing
POD_TABLE: list[tuple[str, PodObservation, tuple[bool, str, bool, bool] | None]] = [
    ("pending", PodObservation(), None),
    ("unschedulable-is-not-a-failure", PodObservation(unschedulable_message="0/3 nodes have nvidia.com/gpu"), None),
    ("running", PodObservation(phase="Running"), None),
    ("image-pull", PodObservation(waiting_reason="ImagePullBackOff"), (FAILED, "ImagePullBackOff", False, True)),
    ("err-image-pull", PodObservation(waiting_reason="ErrImagePull"), (FAILED, "ImagePullBackOff", False, True)),
    (
        "missing-secret",
        PodObservation(waiting_reason="CreateContainerConfigError"),
        (FAILED, "InvalidSpec", False, True),
    ),
    (
        "succeeded",
        PodObservation(phase="Succeeded", exit_code=0, terminated_reason="Completed"),
        (OK, "Succeeded", False, False),
    ),
    (
        "dataset-invalid",
        PodObservation(phase="Failed", exit_code=12, termination_message=term("DatasetInvalid")),
        (FAILED, "DatasetInvalid", False, True),
    ),
    (
        "s3-denied",
        PodObservation(phase="Failed", exit_code=15, termination_message=term("S3AccessDenied")),
        (FAILED, "S3AccessDenied", False, True),
    ),
    (
        "storage-5xx",
        PodObservation(phase="Failed", exit_code=21, termination_message=term("StorageError")),
        (FAILED, "StorageError", True, False),
    ),
    (
        "gpu-oom-not-retried",
        PodObservation(phase="Failed", exit_code=22, termination_message=term("GPUOOM")),
        (FAILED, "GPUOOM", False, False),
    ),
    (
        "host-oom",
        PodObservation(phase="Failed", exit_code=137, terminated_reason="OOMKilled"),
        (FAILED, "OOMKilled", False, False),
    ),
    (
        "sigterm-checkpointed",
        PodObservation(phase="Failed", exit_code=143, termination_message=term("Preempted")),
        (FAILED, "Preempted", True, False),
    ),
    ("evicted", PodObservation(phase="Failed", pod_reason="Evicted"), (FAILED, "Preempted", True, False)),
    (
        "preempted-by-scheduler",
        PodObservation(phase="Failed", exit_code=143, disruption_reason="PreemptionByScheduler"),
        (FAILED, "Preempted", True, False),
    ),
    (
        "deadline",
        PodObservation(phase="Failed", pod_reason="DeadlineExceeded"),
        (FAILED, "DeadlineExceeded", False, True),
    ),
    (
        "sigkill",
        PodObservation(phase="Failed", exit_code=137, terminated_reason="Error"),
        (FAILED, "Killed", True, False),
    ),
    (
        "unknown-crash",
        PodObservation(phase="Failed", exit_code=1, terminated_reason="Error"),
        (FAILED, "Crashed", True, False),
    ),
    (
        "user-error-without-message",
        PodObservation(phase="Failed", exit_code=11),
        (FAILED, "InvalidSpec", False, True),
    ),
]


@pytest.mark.parametrize(
    ("observation", "expected"), [(o, e) for _, o, e in POD_TABLE], ids=[i for i, _, _ in POD_TABLE]
)
def test_pod_state_table(observation: PodObservation, expected: tuple[bool, str, bool, bool] | None) -> None:
    outcome = classify_pod(observation)
    if expected is None:
        assert outcome is None
        return
    assert isinstance(outcome, Outcome)
    assert (outcome.succeeded, outcome.reason, outcome.retryable, outcome.user_error) == expected
    assert not (outcome.retryable and outcome.user_error), "user errors are never retried"


def test_termination_message_summary_and_message_are_kept() -> None:
    outcome = classify_pod(
        PodObservation(
            phase="Failed", exit_code=12, termination_message=term("DatasetInvalid", "train.jsonl line 3: bad")
        )
    )
    assert outcome is not None and "train.jsonl line 3" in outcome.message
    assert isinstance(outcome.report, RunSummary) and outcome.report.reason == "DatasetInvalid"


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


# -- trainers one release newer or older ---------------------------------------------------------


def newer_trainer_failure(exit_code: int) -> str:
    """A newer trainer: a higher version, a field and a reason this release does not know."""
    return json.dumps(
        {
            "version": 2,
            "status": "Failed",
            "job": "ft",
            "reason": "FutureReason",
            "message": "something new went wrong",
            "exitCode": exit_code,
            "userError": exit_code < 20,
            "gpuHours": 3.5,
        }
    )


@pytest.mark.parametrize(
    ("exit_code", "retryable", "user_error"),
    [(17, False, True), (27, True, False)],  # judged by the exit code's range: 10-19 user, 20-29 infrastructure
)
def test_a_newer_trainers_unknown_reason_is_kept_and_judged_by_its_exit_code(
    exit_code: int, retryable: bool, user_error: bool
) -> None:
    outcome = classify_pod(
        PodObservation(phase="Failed", exit_code=exit_code, termination_message=newer_trainer_failure(exit_code))
    )
    assert outcome is not None and not outcome.succeeded
    assert (outcome.reason, outcome.retryable, outcome.user_error) == ("FutureReason", retryable, user_error)
    assert outcome.message == "something new went wrong"
    assert isinstance(outcome.report, RunSummary) and outcome.report.version == 2


@pytest.mark.parametrize(
    ("exit_code", "reason", "retryable", "user_error"),
    [
        (22, None, False, False),  # GPUOOM by its exit code alone: the same batch fails again
        (20, "GPUOOM", False, False),  # a reported GPUOOM rules a retry out even on a generic code
        (12, "StorageError", False, True),  # the exit code decides user vs infrastructure, as its range did
        (21, "StorageError", True, False),
        (10, None, False, True),
    ],
)
def test_exit_code_decides_the_kind_and_the_reason_can_only_rule_a_retry_out(
    exit_code: int, reason: str | None, retryable: bool, user_error: bool
) -> None:
    message = None if reason is None else json.dumps({"status": "Failed", "job": "ft", "reason": reason})
    outcome = classify_pod(PodObservation(phase="Failed", exit_code=exit_code, termination_message=message))
    assert outcome is not None and not outcome.succeeded
    assert (outcome.retryable, outcome.user_error) == (retryable, user_error)


@pytest.mark.parametrize(
    ("message", "exit_code", "expected"),
    [
        (
            '{"status":"Failed","job":"ft","reason":"GPUOOM","message":"m","exitCode":22,"userError":false}',
            22,
            (FAILED, "GPUOOM", False, False),
        ),
        (
            '{"status":"Failed","job":"ft","reason":"StorageError","message":"m","exitCode":21,"userError":false}',
            21,
            (FAILED, "StorageError", True, False),
        ),
        (
            '{"status":"Failed","job":"ft","reason":"DatasetInvalid","message":"m","exitCode":12,"userError":true}',
            12,
            (FAILED, "DatasetInvalid", False, True),
        ),
    ],
)
def test_an_older_trainers_summary_without_version_is_read(
    message: str, exit_code: int, expected: tuple[bool, str, bool, bool]
) -> None:
    outcome = classify_pod(PodObservation(phase="Failed", exit_code=exit_code, termination_message=message))
    assert outcome is not None
    assert (outcome.succeeded, outcome.reason, outcome.retryable, outcome.user_error) == expected
    assert outcome.message == "m"
    assert isinstance(outcome.report, RunSummary) and outcome.report.exit_code == exit_code


def test_an_older_trainers_success_summary_is_kept_for_the_status() -> None:
    summary = json.dumps(
        {
            "status": "Succeeded",
            "job": "ft",
            "step": 100,
            "totalSteps": 100,
            "trainedTokens": 1000,
            "adapterUri": "s3://out/run/adapter/",
        }
    )
    outcome = classify_pod(
        PodObservation(phase="Succeeded", exit_code=0, terminated_reason="Completed", termination_message=summary)
    )
    assert outcome is not None and outcome.succeeded
    assert isinstance(outcome.report, RunSummary)
    assert (outcome.report.step, outcome.report.adapter_uri) == (100, "s3://out/run/adapter/")
