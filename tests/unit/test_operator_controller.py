"""The controller's error path: a failing API call is counted, logged and retried, never fatal."""

from __future__ import annotations

import asyncio
from typing import Any

from kubernetes.client.exceptions import ApiException

from kubetune_operator.controller import ERROR_BACKOFF_SECONDS, Controller
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
