"""The pieces an operator end-to-end test needs: the operator as a real process, the data in
a real S3 server, and small helpers to watch a FineTuneJob through the Kubernetes API."""

from __future__ import annotations

import base64
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import boto3
from kubernetes import client

from conftest import FAKE_CREDENTIALS, upload_tiny_job
from harness.finetunejob import GROUP, NAMESPACE, PLURAL, VERSION, finetunejob
from harness.operator_process import OperatorProcess, free_port, wait_for
from kubetune_api.status import Condition, FineTuneJobStatus

__all__ = ["OperatorProcess", "finetunejob", "operator_process", "wait_for"]

T = TypeVar("T")


def operator_process(kubeconfig: Path, log_path: Path, *args: str) -> OperatorProcess:
    """The operator as the e2e tests run it: quick progress polls, free trainer metrics and rendezvous ports."""
    return OperatorProcess(
        kubeconfig,
        log_path,
        *args,
        KUBETUNE_POLL_INTERVAL_SECONDS="0.5",
        KUBETUNE_METRICS_PORT=str(free_port()),
        # Pods share the host's network here: a free port, so a multi-node job never meets another's store.
        KUBETUNE_RENDEZVOUS_PORT=str(free_port()),
        KUBETUNE_TRAINER_METRICS_LINGER_SECONDS="0.5",
    )


def s3_client(endpoint: str) -> Any:
    """boto3 with the test credentials, as the test itself reads and writes the bucket."""
    creds = {k.lower(): v for k, v in FAKE_CREDENTIALS.items() if k != "AWS_DEFAULT_REGION"}
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **creds)


def stage_tiny_job(endpoint: str, model_dir: Path, bucket: str) -> Any:
    """A bucket with the tiny model (models/tiny/) and the quickstart data (data/numbers.jsonl),
    which finetunejob() points at. Returns the client."""
    s3 = s3_client(endpoint)
    s3.create_bucket(Bucket=bucket)
    upload_tiny_job(s3, model_dir, bucket)
    return s3


def s3_secret(name: str = "s3-creds") -> dict[str, Any]:
    keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "data": {key: base64.b64encode(FAKE_CREDENTIALS[key].encode()).decode() for key in keys},
    }


class Kube:
    """The test's own view of the cluster, through the official client over HTTP."""

    def __init__(self, api_client: Any) -> None:
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)

    def apply(self, body: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body)

    def get(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name))
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def status(self, name: str) -> FineTuneJobStatus:
        """The status as the operator wrote it, read back through the model its schema comes from."""
        obj = self.get(name)
        return FineTuneJobStatus.model_validate((obj or {}).get("status") or {})

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name, {"spec": spec})

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)

    def jobs(self, owner: str) -> list[str]:
        items = self.batch.list_namespaced_job(NAMESPACE, label_selector=f"kubetune.io/finetunejob={owner}").items
        return sorted(j.metadata.name for j in items)

    def children(self, owner: str) -> list[str]:
        selector = f"kubetune.io/finetunejob={owner}"
        maps = self.core.list_namespaced_config_map(NAMESPACE, label_selector=selector).items
        return sorted([*self.jobs(owner), *(f"configmap/{m.metadata.name}" for m in maps)])

    def events(self, name: str) -> list[tuple[str, str]]:
        items = self.core.list_namespaced_event(NAMESPACE).items
        return [
            (e.type, e.reason)
            for e in sorted(items, key=lambda e: (e.metadata.creation_timestamp or 0, e.metadata.name))
            if e.involved_object is not None and e.involved_object.name == name
        ]

    def wait_phase(
        self, name: str, phases: set[str], timeout: float, check: Callable[[], None] | None = None
    ) -> FineTuneJobStatus:
        def probe() -> FineTuneJobStatus | None:
            status = self.status(name)
            return status if status.phase in phases else None

        try:
            return wait_for(probe, timeout, f"{name} to reach {sorted(phases)}", check)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; status now: {self.status(name)}") from exc


def conditions(status: FineTuneJobStatus) -> dict[str, Condition]:
    return {str(c.type): c for c in status.conditions}


def phase_recorder(kube: Kube, name: str) -> Callable[[], list[str]]:
    """Samples the job's phase in the background; returns the distinct phases seen, in order."""
    import threading

    seen: list[str] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                phase = kube.status(name).phase
            except Exception:  # sampling must not end the test
                phase = None
            if phase and (not seen or seen[-1] != phase):
                seen.append(phase)
            time.sleep(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()

    def finish() -> list[str]:
        stop.set()
        thread.join(timeout=5)
        final = kube.status(name).phase  # the last change may have landed after the last sample
        if final and (not seen or seen[-1] != final):
            seen.append(final)
        return seen

    return finish


SIGKILL = signal.SIGKILL
