"""A model cache that survives retries (issue 10, item 7), end to end through the operator.

The FineTuneJob names a cache PVC (`spec.cache`). Its first trainer attempt stages the model and is
SIGKILLed mid-training (an infrastructure failure); the operator retries, and attempt 2 must find
the model in the claim instead of downloading it again. The proof is the S3 GETs themselves: every
pod talks to S3 through a counting proxy (tests/harness/s3_proxy.py) set as `storage.endpoint`.
The test kubelet keeps a claim's directory across pods, as a real volume does.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_env import SIGKILL, Kube, OperatorProcess, finetunejob, stage_tiny_job, wait_for

from harness import Cluster
from harness.s3_proxy import CountingS3Proxy
from kubetune_api.status import FineTuneJobStatus

pytestmark = [pytest.mark.slow, pytest.mark.s3]
pytest_plugins = ["operator_fixtures"]  # cluster, kube, operator

TRAIN_TIMEOUT = 240
CLAIM = "model-cache"


@pytest.fixture
def staged(s3_endpoint: str, tiny_model_dir: Path) -> dict[str, str]:
    bucket = f"kt-cache-{uuid.uuid4().hex[:8]}"
    stage_tiny_job(s3_endpoint, tiny_model_dir, bucket)
    return {"bucket": bucket}


@pytest.fixture
def proxy(s3_endpoint: str) -> Iterator[CountingS3Proxy]:
    with CountingS3Proxy(s3_endpoint) as running:
        yield running


def mark_when_started(cluster: Cluster, proxy: CountingS3Proxy, prefix: str) -> dict[str, int]:
    """Record the proxy's position when a pod named `prefix...` starts (its process needs seconds of
    imports before its first S3 request, so everything before the mark is earlier pods')."""
    marks: dict[str, int] = {}

    def watch() -> None:
        deadline = time.monotonic() + TRAIN_TIMEOUT
        while not any(name.startswith(prefix) for name in cluster.started_pods):
            if time.monotonic() > deadline:
                return  # the test fails on the missing mark
            time.sleep(0.02)
        marks[prefix] = proxy.mark()

    threading.Thread(target=watch, daemon=True).start()
    return marks


def test_a_retry_finds_the_model_in_the_cache_claim_and_does_not_download_it_again(
    kube: Kube,
    cluster: Cluster,
    operator: OperatorProcess,
    staged: dict[str, str],
    proxy: CountingS3Proxy,
    tiny_model_dir: Path,
) -> None:
    bucket = staged["bucket"]
    kube.core.create_namespaced_persistent_volume_claim(
        "default",
        {
            "metadata": {"name": CLAIM},
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "10Gi"}}},
        },
    )
    body = finetunejob(
        "cached",
        bucket,
        proxy.endpoint,
        training={"maxSteps": 200, "checkpointEverySteps": 50},
        backoffLimit=2,
        cache={"claimName": CLAIM, "sizeLimit": "1Gi"},
    )
    kube.apply(body)
    marks = mark_when_started(cluster, proxy, "cached-train-1-")

    def running() -> FineTuneJobStatus | None:
        status = kube.status("cached")
        if status.phase in {"Failed", "Succeeded"}:
            raise AssertionError(f"the job finished before the test could kill it: {status}")
        return status if status.phase == "Running" else None

    wait_for(running, TRAIN_TIMEOUT, "attempt 1 running (so its model is staged)", operator.check_alive)
    [victim] = [p for p in cluster.pods("kubetune.io/attempt=1") if p["metadata"]["name"].startswith("cached-train")]
    killed_at = proxy.mark()  # every request of attempt 1 arrived before its SIGKILL
    cluster.kill(victim["metadata"]["name"], SIGKILL)

    status = kube.wait_phase("cached", {"Succeeded", "Failed"}, TRAIN_TIMEOUT, operator.check_alive)
    assert status.phase == "Succeeded", status
    assert status.attempts == 2 and status.last_failure is not None and status.last_failure.reason == "Killed"

    # GETs of each model object in each window: preflight | attempt 1 | attempt 2. Ranged GETs (the
    # preflight reads the weights' header) are counted apart from whole-object downloads.
    started = marks["cached-train-1-"]
    requests = proxy.requests
    files = sorted(p.relative_to(tiny_model_dir).as_posix() for p in tiny_model_dir.rglob("*") if p.is_file())
    model = f"/{bucket}/models/tiny/"
    windows = {
        "preflight": requests[:started],
        "attempt 1": requests[started:killed_at],
        "attempt 2": requests[killed_at:],
    }
    gets = {
        window: {f: sum(1 for r in seen if r.method == "GET" and r.path == model + f and not r.range) for f in files}
        for window, seen in windows.items()
    }
    ranged = {
        w: sum(1 for r in seen if r.method == "GET" and r.path.startswith(model) and r.range)
        for w, seen in windows.items()
    }
    totals = {window: sum(counts.values()) for window, counts in gets.items()}
    data_gets = {
        w: sum(1 for r in seen if r.method == "GET" and r.path.endswith("/data/numbers.jsonl"))
        for w, seen in windows.items()
    }
    print(f"\nmodel downloads (whole-object GETs) per window: {totals}; ranged GETs: {ranged}")
    print(f"per file: {gets}; dataset GETs: {data_gets}")

    assert all(count == 1 for count in gets["attempt 1"].values()), gets  # attempt 1 staged every file, once
    assert totals["attempt 2"] == 0 and ranged["attempt 2"] == 0, gets  # the retry read nothing of the model
    assert data_gets["attempt 2"] == 0, data_gets  # nor the dataset
    assert gets["preflight"]["model.safetensors"] == 0  # the CPU preflight never downloads the weights

    retry = next(p for p in cluster.pods("kubetune.io/attempt=2") if p["metadata"]["name"].startswith("cached-train"))
    log = cluster.log(retry["metadata"]["name"])
    assert f"cache hit for s3://{bucket}/models/tiny/" in log, log[-3000:]
    # The entries live on the claim (outside any pod's directory), whole, with no half-written leftovers.
    cache_root = cluster.work_root / "pvcs" / "default" / CLAIM / "objects"
    entries = [p for p in cache_root.iterdir() if not p.name.startswith(".")]
    assert entries and all((p / "COMPLETE").is_file() for p in entries)
    assert not list((cache_root / ".tmp").iterdir())


def test_a_job_whose_cache_claim_does_not_exist_waits_without_failing(
    kube: Kube, cluster: Cluster, operator: OperatorProcess
) -> None:
    """A missing claim keeps the pod from starting (as on a real node); nothing is downloaded or failed."""
    body = finetunejob("noclaim", "bucket-x", "http://127.0.0.1:1", cache={"claimName": "missing-claim"})
    kube.apply(body)
    wait_for(
        lambda: any(p["metadata"]["name"].startswith("noclaim-preflight") for p in cluster.pods()),
        60,
        "the preflight pod",
        operator.check_alive,
    )

    def waiting_pod() -> dict[str, Any] | None:
        for pod in cluster.pods("kubetune.io/finetunejob=noclaim"):
            statuses = (pod.get("status") or {}).get("containerStatuses") or []
            waiting = [(s.get("state") or {}).get("waiting") for s in statuses]
            if any(w and "missing-claim" in (w.get("message") or "") for w in waiting):
                return pod
        return None

    wait_for(waiting_pod, 60, "the pod to wait for its claim", operator.check_alive)
    assert cluster.started_pods == [] and kube.status("noclaim").phase not in {"Failed", "Succeeded"}
