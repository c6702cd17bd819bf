"""The controller's error path: a failing API call is counted, logged and retried, never fatal."""

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
