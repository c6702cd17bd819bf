"""The controller: a failing API call is counted, logged and retried, never fatal; a cancel is applied in order."""

from __future__ import annotations

import asyncio
from typing import Any

from kubernetes.client.exceptions import ApiException

from kubetune_api.status import EvaluationStatus, FineTuneJobStatus, GateOutcome, Phase
from kubetune_operator.controller import ERROR_BACKOFF_SECONDS, Controller
from kubetune_operator.decide import Decision
from kubetune_operator.metrics import OperatorMetrics
from kubetune_operator.settings import OperatorSettings


class FailingKube:
    """Stands in for kubetune_operator.kube.Kube: every write is refused by the API server."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def create(self, obj: dict[str, Any]) -> bool:
        self.calls.append(f"create {obj['kind']}")
        raise ApiException(status=500, reason="Internal Server Error")

    async def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.calls.append("patch status")

    def close(self) -> None:
        pass


def test_a_failed_api_call_is_counted_and_retried_without_writing_status() -> None:
    kube = FailingKube()
    metrics = OperatorMetrics()
    controller = Controller(OperatorSettings(), kube, metrics)  # type: ignore[arg-type]
    body = {
        "metadata": {"name": "ft", "namespace": "team", "uid": "u", "generation": 1},
        "spec": {
            "baseModel": {"uri": "s3://models/llama/"},
            "dataset": {"train": "s3://data/train.jsonl"},
            "output": {"uri": "s3://out/run/"},
        },
    }
    events: list[tuple[str, str, str]] = []
    wait = asyncio.run(controller.reconcile(body, [], [], lambda *event: events.append(event)))
    assert wait == ERROR_BACKOFF_SECONDS
    assert metrics.registry.get_sample_value("kubetune_reconcile_errors_total") == 1
    # The preflight could not be created: status must not claim it was, and no Event says so.
    assert kube.calls == ["create ConfigMap"] and events == []


class RecordingKube:
    """Stands in for Kube: every call succeeds and is recorded."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.patches: list[dict[str, Any]] = []

    async def delete_children(self, namespace: str, owner: str) -> int:
        self.calls.append(f"delete children of {namespace}/{owner}")
        return 2

    async def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.calls.append("patch status")
        self.patches.append(patch)

    def close(self) -> None:
        pass


def test_cancel_removes_the_children_before_the_status_says_cancelled_and_counts_the_transition() -> None:
    kube = RecordingKube()
    metrics = OperatorMetrics()
    controller = Controller(OperatorSettings(), kube, metrics)  # type: ignore[arg-type]
    body = {
        "metadata": {"name": "ft", "namespace": "team", "uid": "u", "generation": 2},
        "spec": {"cancel": True},  # the rest of the spec does not matter to a cancel
        "status": {"phase": "Running"},
    }
    events: list[tuple[str, str, str]] = []
    asyncio.run(controller.reconcile(body, [], [], lambda *event: events.append(event)))
    assert kube.calls == ["delete children of team/ft", "patch status"]
    assert kube.patches[0]["phase"] == "Cancelled"
    assert [event[:2] for event in events] == [("Normal", "UserCancelled")]
    transitions = {"from_phase": "Running", "to_phase": "Cancelled"}
    assert metrics.registry.get_sample_value("kubetune_finetunejob_phase_transitions_total", transitions) == 1
    assert metrics.registry.get_sample_value("kubetune_finetunejobs", {"phase": "Cancelled"}) == 1
    assert metrics.registry.get_sample_value("kubetune_finetunejob_failures_total", {"reason": "UserCancelled"}) is None


def test_a_failed_gate_is_counted_once_by_metric_and_jobs_are_counted_by_verdict() -> None:
    metrics = OperatorMetrics()
    controller = Controller(OperatorSettings(), FailingKube(), metrics)  # type: ignore[arg-type]
    running = FineTuneJobStatus(phase=Phase.RUNNING)
    failed = FineTuneJobStatus(
        phase=Phase.SUCCEEDED, evaluation=EvaluationStatus(result=GateOutcome.FAILED, metric="evalLoss")
    )
    passed = FineTuneJobStatus(
        phase=Phase.SUCCEEDED, evaluation=EvaluationStatus(result=GateOutcome.PASSED, metric="evalLoss")
    )
    controller._record(("team", "a"), running, Decision(status=failed))
    controller._record(("team", "a"), failed, Decision(status=failed))  # a later reconcile: not counted again
    controller._record(("team", "b"), running, Decision(status=passed))
    controller._record(("team", "c"), running, Decision(status=FineTuneJobStatus(phase=Phase.SUCCEEDED)))  # no gate
    sample = metrics.registry.get_sample_value
    assert sample("kubetune_finetunejob_evaluation_gate_failures_total", {"metric": "evalLoss"}) == 1
    assert sample("kubetune_finetunejob_evaluations", {"result": "Failed"}) == 1
    assert sample("kubetune_finetunejob_evaluations", {"result": "Passed"}) == 1
    controller.forget(("team", "a"))
    assert sample("kubetune_finetunejob_evaluations", {"result": "Failed"}) == 0
