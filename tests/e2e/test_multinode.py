"""Multi-node training through the operator: `resources.nodes: 2` on CPU nodes.

The operator creates an Indexed Job and a headless Service per attempt; each pod gets its own
127.0.0.N, and the test kubelet resolves `<job>-<index>.<service>` as CoreDNS would (only while the
Service selects the pod: see harness/dns.py). The two pods rendezvous through that name
(torchrun under `accelerate launch`) and train with gloo. The loss curve must be the one process's,
a killed rank must fail the whole attempt, and the next attempt must resume from the checkpoint.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from operator_env import (
    SIGKILL,
    Kube,
    OperatorProcess,
    finetunejob,
    stage_tiny_job,
    wait_for,
)

from harness import Cluster
from harness.cluster import INDEX_KEY
from kubetune_api.status import FineTuneJobStatus

pytestmark = [pytest.mark.slow, pytest.mark.s3]
pytest_plugins = ["operator_fixtures"]  # cluster, kube, operator

TRAIN_TIMEOUT = 300
TWO_NODES = {"gpus": 0, "nodes": 2}


@pytest.fixture
def staged(s3_endpoint: str, tiny_model_dir: Path) -> dict[str, Any]:
    bucket = f"kt-nodes-{uuid.uuid4().hex[:8]}"
    s3 = stage_tiny_job(s3_endpoint, tiny_model_dir, bucket)
    return {"bucket": bucket, "endpoint": s3_endpoint, "s3": s3}


def loss_curve(staged: dict[str, Any], name: str) -> list[dict[str, float]]:
    body = staged["s3"].get_object(Bucket=staged["bucket"], Key=f"out/{name}/metrics.json")["Body"].read()
    return list(json.loads(body)["loss_curve"])


def trainer_pods(cluster: Cluster, name: str, attempt: int) -> list[dict[str, Any]]:
    pods = cluster.pods(f"kubetune.io/finetunejob={name},kubetune.io/attempt={attempt}")
    return [p for p in pods if p["metadata"]["labels"].get("app.kubernetes.io/component") == "trainer"]


def pod_logs(cluster: Cluster, name: str) -> str:
    """Every pod's log tail, for an assertion's message."""
    tails = []
    for pod in cluster.pods(f"kubetune.io/finetunejob={name}"):
        pod_name = pod["metadata"]["name"]
        tails.append(f"--- {pod_name} ({(pod.get('status') or {}).get('phase')})\n{cluster.log(pod_name)[-2500:]}")
    return "\n".join(tails)


def test_two_nodes_rendezvous_through_the_headless_service_and_follow_one_process(
    kube: Kube, cluster: Cluster, operator: OperatorProcess, staged: dict[str, Any]
) -> None:
    bucket, endpoint = staged["bucket"], staged["endpoint"]
    # The same rows per optimizer step: 2 nodes x 4 rows, or 1 process x 8 rows.
    kube.apply(finetunejob("pair", bucket, endpoint, training={"batchSize": 4}, resources=TWO_NODES))
    kube.apply(finetunejob("solo", bucket, endpoint, training={"batchSize": 8}))
    pair = kube.wait_phase("pair", {"Succeeded", "Failed"}, TRAIN_TIMEOUT, operator.check_alive)
    solo = kube.wait_phase("solo", {"Succeeded", "Failed"}, TRAIN_TIMEOUT, operator.check_alive)
    assert pair.phase == "Succeeded", f"{pair}\n{pod_logs(cluster, 'pair')}"
    assert solo.phase == "Succeeded", solo

    assert pair.world_size == 2 and solo.world_size == 1
    assert pair.attempts == 1 and [c.step for c in pair.checkpoints][-1] >= 20

    job = kube.batch.read_namespaced_job("pair-train-1", "default")
    assert (job.spec.completion_mode, job.spec.completions, job.spec.parallelism) == ("Indexed", 2, 2)
    service = kube.core.read_namespaced_service("pair-train-1", "default")
    assert service.spec.cluster_ip == "None" and service.spec.publish_not_ready_addresses is True

    pods = sorted(trainer_pods(cluster, "pair", 1), key=lambda p: int(p["metadata"]["annotations"][INDEX_KEY]))
    assert [p["spec"]["hostname"] for p in pods] == ["pair-train-1-0", "pair-train-1-1"]
    assert {p["spec"]["subdomain"] for p in pods} == {"pair-train-1"}
    ips = [p["status"]["podIP"] for p in pods]
    assert len(set(ips)) == 2 and "127.0.0.1" not in ips
    # Both found rank 0 by its Service name, which resolved to rank 0's own address.
    records = cluster.dns.hosts.read_text()
    assert f"{ips[0]} pair-train-1-0.pair-train-1.default.svc.cluster.local pair-train-1-0.pair-train-1" in records
    for pod in pods:
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert env["KUBETUNE_RENDEZVOUS_HOST"] == "pair-train-1-0.pair-train-1"
    assert "ddp over 2 processes" in cluster.log(pods[0]["metadata"]["name"])  # gloo: no GPU here

    two, one = loss_curve(staged, "pair"), loss_curve(staged, "solo")
    assert [p["step"] for p in two] == [p["step"] for p in one]
    assert [p["tokens"] for p in two] == [p["tokens"] for p in one], "tokens are summed over the nodes"
    for a, b in zip(one, two, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-4), f"step {a['step']}"


def test_a_killed_rank_fails_the_attempt_and_the_next_attempt_resumes_from_the_checkpoint(
    kube: Kube, cluster: Cluster, operator: OperatorProcess, staged: dict[str, Any]
) -> None:
    training = {"maxSteps": 300, "checkpointEverySteps": 20}
    body = finetunejob("ring", staged["bucket"], staged["endpoint"], training=training, resources=TWO_NODES)
    body["spec"]["backoffLimit"] = 2
    kube.apply(body)

    def checkpointed() -> FineTuneJobStatus | None:
        status = kube.status("ring")
        assert status.phase not in {"Failed", "Succeeded"}, f"ring finished before the kill: {status}"
        return status if status.phase == "Running" and status.checkpoints else None

    running = wait_for(checkpointed, TRAIN_TIMEOUT, "ring running with a checkpoint")
    rank1 = next(p for p in trainer_pods(cluster, "ring", 1) if p["metadata"]["annotations"][INDEX_KEY] == "1")
    cluster.kill(rank1["metadata"]["name"], SIGKILL)

    status = kube.wait_phase("ring", {"Succeeded", "Failed"}, TRAIN_TIMEOUT, operator.check_alive)
    assert status.phase == "Succeeded", f"{status}\n{pod_logs(cluster, 'ring')}"
    assert status.attempts == 2 and status.world_size == 2
    assert status.last_failure is not None and status.last_failure.reason == "Killed", status.last_failure
    # Attempt 1's Job may be gone: the operator deletes a failed attempt's Job while a rank still runs.
    assert [j for j in kube.jobs("ring") if j != "ring-train-1"] == ["ring-preflight", "ring-train-2"]
    # The whole first attempt ended: its rank 0 did not outlive its peer.
    assert all(
        p["status"]["phase"] in {"Failed", "Succeeded"} or p["metadata"].get("deletionTimestamp")
        for p in trainer_pods(cluster, "ring", 1)
    )
    retry = trainer_pods(cluster, "ring", 2)
    assert sorted(p["metadata"]["annotations"][INDEX_KEY] for p in retry) == ["0", "1"]
    rank0 = next(p for p in retry if p["metadata"]["annotations"][INDEX_KEY] == "0")
    log = cluster.log(rank0["metadata"]["name"])
    assert "resumed from checkpoint step" in log, log[-3000:]
    resumed_from = int(log.split("resumed from checkpoint step")[1].split()[0].strip(":,"))
    assert resumed_from >= running.checkpoints[-1].step
    assert [e for e in kube.events("ring") if e[1] == "Retrying"] == [("Warning", "Retrying")]
