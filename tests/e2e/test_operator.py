"""The operator end to end: a kmock Kubernetes API on 127.0.0.1, the real kopf operator as a
process, a SeaweedFS S3 server, and a test kubelet that runs every pod's command as a local process.

Each test applies a FineTuneJob through the official client and watches what a user would
see: phases, conditions, Events, children, and the artifacts in S3.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from operator_env import (
    SIGKILL,
    Kube,
    OperatorProcess,
    conditions,
    finetunejob,
    operator_process,
    phase_recorder,
    s3_client,
    stage_tiny_job,
    wait_for,
)

from harness import Cluster
from kubetune_api.status import ConditionType, FineTuneJobStatus

pytestmark = [pytest.mark.slow, pytest.mark.s3]
pytest_plugins = ["operator_fixtures"]  # cluster, kube, operator

TRAIN_TIMEOUT = 240
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def staged(s3_endpoint: str, tiny_model_dir: Path) -> dict[str, str]:
    """The tiny model and the quickstart data in a bucket, once for the module."""
    bucket = "kubetune-e2e"
    s3 = stage_tiny_job(s3_endpoint, tiny_model_dir, bucket)
    s3.put_object(Bucket=bucket, Key="data/broken.jsonl", Body=b'{"prompt": "a", "completion": "b"}\n{not json\n')
    return {"bucket": bucket, "endpoint": s3_endpoint}


@pytest.fixture
def s3(staged: dict[str, str]) -> Any:
    return s3_client(staged["endpoint"])


def objects_under(s3: Any, bucket: str, prefix: str) -> set[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {obj["Key"][len(prefix) :] for page in pages for obj in page.get("Contents", [])}


def trainer_pods(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    return [
        p
        for p in cluster.pods(f"kubetune.io/finetunejob={name},app.kubernetes.io/component=trainer")
        if not p["metadata"].get("deletionTimestamp")
    ]


def running_trainer(cluster: Cluster, kube: Kube, name: str, with_checkpoint: bool = True) -> FineTuneJobStatus:
    """Wait until the operator reports the trainer running (and a checkpoint saved)."""

    def probe() -> FineTuneJobStatus | None:
        status = kube.status(name)
        if status.phase in {"Failed", "Succeeded"}:
            raise AssertionError(f"{name} finished before the test could act: {status}")
        ready = status.phase == "Running" and (status.checkpoints or not with_checkpoint)
        return status if ready else None

    return wait_for(probe, TRAIN_TIMEOUT, f"{name} running with a checkpoint")


# -- the happy path ------------------------------------------------------------------------------


def test_happy_path_validates_trains_and_publishes_artifacts(
    kube: Kube, cluster: Cluster, operator: OperatorProcess, staged: dict[str, str], s3: Any
) -> None:
    kube.apply(finetunejob("happy", staged["bucket"], staged["endpoint"]))
    phases = phase_recorder(kube, "happy")
    status = kube.wait_phase("happy", {"Succeeded", "Failed"}, TRAIN_TIMEOUT, operator.check_alive)
    seen = phases()
    assert status.phase == "Succeeded", status

    # The story `kubectl get ftj` tells, in order, with no GPU Job before the data passed.
    assert seen[0] in {"Validating", "Pending"} and seen[-1] == "Succeeded"
    assert seen.index("Validating") < seen.index("Initializing") < seen.index("Succeeded")
    if "Running" in seen:  # never a step backwards once training started
        assert not {"Validating", "Initializing"} & set(seen[seen.index("Running") :]), seen
    by_type = conditions(status)
    for kind in ("SpecValid", "DataValidated", "Admitted", "Complete"):
        assert by_type[kind].status == "True", by_type[kind]
        assert by_type[kind].observed_generation == 1
    assert status.preflight is not None and status.progress is not None and status.metrics is not None
    assert status.preflight.train_rows == 900 and status.preflight.estimated_steps == 30
    assert status.progress.percent == "100%" and status.progress.step == 30
    assert (status.metrics.train_loss or 0) > 0 and (status.metrics.eval_loss or 0) > 0
    assert status.attempts == 1 and (status.trained_tokens or 0) > 0
    assert [c.step for c in status.checkpoints][-1] >= 20

    outputs = objects_under(s3, staged["bucket"], "out/happy/")
    assert {"manifest.json", "adapter_model.safetensors", "adapter_config.json", "metrics.json", "eval.json"} <= outputs
    assert status.artifacts is not None
    assert status.artifacts.manifest_uri == f"s3://{staged['bucket']}/out/happy/manifest.json"
    # the serving handoff: copy the adapter from the bucket and serve it with vLLM (docs/serving.md)
    serving = status.artifacts.serving
    assert serving is not None and serving.vllm_problems == [] and serving.vllm_command is not None
    assert f"aws s3 sync s3://{staged['bucket']}/out/happy/ ./adapters/happy" in serving.vllm_command
    assert "--enable-lora --max-lora-rank" in serving.vllm_command and "InferenceService" in (
        serving.kserve_inference_service or ""
    )

    # one preflight Job and one trainer Job, each owned by the FineTuneJob
    assert kube.jobs("happy") == ["happy-preflight", "happy-train-1"]
    uid = kube.get("happy")["metadata"]["uid"]  # type: ignore[index]
    for name in kube.jobs("happy"):
        owners = kube.batch.read_namespaced_job(name, "default").metadata.owner_references
        assert [(o.kind, o.uid, o.controller) for o in owners] == [("FineTuneJob", uid, True)]

    events = kube.events("happy")
    for reason in ("Validating", "DataValidated", "Initializing", "Succeeded"):
        assert ("Normal", reason) in events, events

    metrics = operator.metrics()
    assert 'kubetune_finetunejobs{phase="Succeeded"} 1.0' in metrics
    assert 'kubetune_finetunejob_phase_transitions_total{from_phase="Running",to_phase=' in metrics or (
        "kubetune_finetunejob_phase_transitions_total" in metrics
    )
    assert "kubetune_reconcile_duration_seconds_count" in metrics
    assert operator.get("/healthz", port=operator.port + 1) is not None  # kopf's liveness endpoint


# -- the evaluation gate -------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed (make test installs it as root)")
def test_evaluation_gate_one_job_passes_one_fails_and_both_publish(
    kube: Kube, cluster: Cluster, operator: OperatorProcess, staged: dict[str, str], s3: Any, kube_api: Any
) -> None:
    """Two jobs train the same thing; one gate is within reach, the other impossible. Both succeed and publish:
    the verdict is the EvaluationPassed condition, status.evaluation, the EVAL column, an Event and a metric."""
    short = {"maxSteps": 10}
    bars = {"gate-pass": 100.0, "gate-fail": 0.001}
    for name, threshold in bars.items():
        gate = {"gate": {"metric": "evalLoss", "threshold": threshold, "mustBeatBaseline": True}}
        kube.apply(finetunejob(name, staged["bucket"], staged["endpoint"], training=short, evaluation=gate))
    finished = {
        name: kube.wait_phase(name, {"Succeeded", "Failed"}, TRAIN_TIMEOUT, operator.check_alive) for name in bars
    }
    for name, status in finished.items():
        assert status.phase == "Succeeded", status  # a failed gate does not fail the run
        assert "manifest.json" in objects_under(s3, staged["bucket"], f"out/{name}/")

    passed, failed = finished["gate-pass"], finished["gate-fail"]
    assert conditions(passed)["EvaluationPassed"].status == "True"
    assert conditions(passed)["EvaluationPassed"].reason == "ThresholdMet"
    assert conditions(failed)["EvaluationPassed"].status == "False"
    assert conditions(failed)["EvaluationPassed"].reason == "ThresholdNotMet"
    assert "is above the maximum 0.001" in conditions(failed)["EvaluationPassed"].message
    for status, result in ((passed, "Passed"), (failed, "Failed")):
        evaluation = status.evaluation
        assert evaluation is not None and evaluation.result == result and evaluation.metric == "evalLoss"
        assert (
            evaluation.value is not None and evaluation.baseline is not None and evaluation.value < evaluation.baseline
        )
        assert evaluation.eval_loss == evaluation.value and evaluation.baseline_eval_loss == evaluation.baseline

    # Events are posted in the background after the status write: wait for them rather than race it.
    for name, event in (
        ("gate-pass", ("Normal", "EvaluationPassed")),
        ("gate-fail", ("Warning", "EvaluationGateFailed")),
    ):
        wait_for(lambda: event in kube.events(name), 60, f"{name}'s {event[1]} Event", operator.check_alive)  # noqa: B023
    assert ("Warning", "EvaluationGateFailed") not in kube.events("gate-pass")

    manifest = json.loads(s3.get_object(Bucket=staged["bucket"], Key="out/gate-fail/manifest.json")["Body"].read())
    assert manifest["gate"]["passed"] is False and manifest["gate"]["reason"] == "ThresholdNotMet"
    card = s3.get_object(Bucket=staged["bucket"], Key="out/gate-fail/README.md")["Body"].read().decode()
    assert "**failed** (ThresholdNotMet)" in card and "## Error analysis" in card

    command = ["kubectl", "--kubeconfig", str(kube_api.kubeconfig), "get", "ftj", *bars]
    table = subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()
    assert table[0].split()[:5] == ["NAME", "PHASE", "PROGRESS", "LOSS", "EVAL"]
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert rows["gate-pass"][1] == "Succeeded" and rows["gate-pass"][4] == "Passed"
    assert rows["gate-fail"][1] == "Succeeded" and rows["gate-fail"][4] == "Failed"

    metrics = operator.metrics()
    assert 'kubetune_finetunejob_evaluations{result="Passed"} 1.0' in metrics
    assert 'kubetune_finetunejob_evaluations{result="Failed"} 1.0' in metrics
    assert 'kubetune_finetunejob_evaluation_gate_failures_total{metric="evalLoss"} 1.0' in metrics


# -- failures before any GPU ---------------------------------------------------------------------


def test_bad_dataset_fails_in_preflight_and_no_trainer_job_is_created(
    kube: Kube, cluster: Cluster, operator: OperatorProcess, staged: dict[str, str]
) -> None:
    body = finetunejob("baddata", staged["bucket"], staged["endpoint"])
    body["spec"]["dataset"]["train"] = f"s3://{staged['bucket']}/data/broken.jsonl"
    kube.apply(body)
    status = kube.wait_phase("baddata", {"Failed", "Succeeded"}, 120, operator.check_alive)
    assert status.error is not None and status.error.reason == "DatasetInvalid", status
    assert "line 2" in status.error.message and status.error.exit_code == 12
    assert conditions(status)["DataValidated"].status == "False"
    assert kube.jobs("baddata") == ["baddata-preflight"]  # no GPU Job, ever
    assert ("Warning", "DatasetInvalid") in kube.events("baddata")
    assert all(
        p["metadata"]["labels"]["app.kubernetes.io/component"] == "preflight"
        for p in cluster.pods("kubetune.io/finetunejob=baddata")
    )


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed (make test installs it as root)")
def test_kubectl_get_ftj_shows_the_generated_printer_columns(
    kube: Kube, operator: OperatorProcess, kube_api: Any
) -> None:
    body = finetunejob("shown", "bucket-x", "http://127.0.0.1:1")
    body["spec"]["dataset"]["train"] = "data/train.jsonl"  # valid for the schema, InvalidSpec for the operator
    kube.apply(body)
    kube.wait_phase("shown", {"Failed"}, 30, operator.check_alive)

    def kubectl(*args: str) -> list[str]:
        command = ["kubectl", "--kubeconfig", str(kube_api.kubeconfig), *args]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()

    header, row = kubectl("get", "ftj")[:2]
    assert header.split() == ["NAME", "PHASE", "PROGRESS", "LOSS", "EVAL", "ETA", "AGE"]
    assert row.split()[:2] == ["shown", "Failed"]
    wide_header = kubectl("get", "finetunejobs", "-o", "wide")[0].split()
    assert wide_header == [
        "NAME", "PHASE", "PROGRESS", "LOSS", "EVAL", "ETA", "AGE", "MODEL", "GPUS", "ATTEMPTS", "GPU-HOURS"
    ]  # fmt: skip
    assert any("shown" in line for line in kubectl("get", "kubetune"))  # the category


def test_invalid_spec_fails_without_pods(kube: Kube, cluster: Cluster, operator: OperatorProcess) -> None:
    """What the CRD schema accepts but cannot run in a pod is the operator's InvalidSpec, every field named."""
    body = finetunejob("invalid", "bucket-x", "http://127.0.0.1:1")
    body["spec"]["dataset"]["train"] = "data/train.jsonl"  # a path inside the image, not the user's data
    body["spec"]["training"] = {**body["spec"].get("training", {}), "precision": "fp16"}  # on a CPU-only job
    kube.apply(body)
    status = kube.wait_phase("invalid", {"Failed"}, 30, operator.check_alive)
    assert status.error is not None and status.error.reason == "InvalidSpec"
    assert "spec.dataset.train" in status.error.message and "spec.training.precision" in status.error.message
    assert conditions(status)["SpecValid"].status == "False"
    assert kube.children("invalid") == [] and cluster.pods("kubetune.io/finetunejob=invalid") == []
    assert ("Warning", "InvalidSpec") in kube.events("invalid")


def test_schema_invalid_spec_is_refused_by_the_api(kube: Kube, operator: OperatorProcess) -> None:
    """What the CRD schema forbids never reaches the operator: the apiserver refuses it, naming the field."""
    body = finetunejob("refused", "bucket-x", "http://127.0.0.1:1")
    body["spec"]["lora"]["r"] = 0
    with pytest.raises(ApiException) as refused:
        kube.apply(body)
    assert refused.value.status == 422 and "spec.lora.r" in str(refused.value.body)
    assert kube.get("refused") is None and kube.jobs("refused") == []


# -- interruptions -------------------------------------------------------------------------------

LONG = {"maxSteps": 400, "checkpointEverySteps": 20}


def test_killed_trainer_is_retried_and_the_retry_resumes_from_a_checkpoint(
    kube: Kube, cluster: Cluster, operator: OperatorProcess, staged: dict[str, str]
) -> None:
    kube.apply(finetunejob("killed", staged["bucket"], staged["endpoint"], training=LONG, backoffLimit=2))
    running = running_trainer(cluster, kube, "killed")
    (victim,) = trainer_pods(cluster, "killed")
    cluster.kill(victim["metadata"]["name"], SIGKILL)

    status = kube.wait_phase("killed", {"Succeeded", "Failed"}, TRAIN_TIMEOUT, operator.check_alive)
    assert status.phase == "Succeeded", status
    assert status.attempts == 2
    assert status.last_failure is not None and status.last_failure.reason == "Killed"
    assert kube.jobs("killed") == ["killed-preflight", "killed-train-1", "killed-train-2"]
    retry_pod = next(p for p in cluster.pods("kubetune.io/attempt=2") if p["metadata"]["name"].startswith("killed"))
    log = cluster.log(retry_pod["metadata"]["name"])
    assert "resumed from checkpoint step" in log, log[-2000:]
    resumed_from = int(log.split("resumed from checkpoint step")[1].split()[0].strip(":,"))
    assert resumed_from >= running.checkpoints[-1].step
    retrying = [e for e in kube.events("killed") if e[1] == "Retrying"]
    assert retrying == [("Warning", "Retrying")]


def test_delete_cancels_the_trainer_and_removes_children(
    kube: Kube, cluster: Cluster, operator: OperatorProcess, staged: dict[str, str]
) -> None:
    kube.apply(finetunejob("cancelled", staged["bucket"], staged["endpoint"], training=LONG))
    running_trainer(cluster, kube, "cancelled", with_checkpoint=False)
    (pod,) = trainer_pods(cluster, "cancelled")
    kube.delete("cancelled")
    wait_for(lambda: kube.get("cancelled") is None, 60, "the FineTuneJob to go", operator.check_alive)
    wait_for(lambda: kube.children("cancelled") == [], 30, "children to go")
    wait_for(lambda: cluster.pods("kubetune.io/finetunejob=cancelled") == [], 60, "pods to go")
    # The trainer got SIGTERM (not SIGKILL) and checkpointed on its way out.
    log = cluster.log(pod["metadata"]["name"])
    assert "SIGTERM" in log or "Preempted" in log, log[-2000:]
    assert ("Normal", "UserCancelled") in kube.events("cancelled")


def test_spec_cancel_stops_the_trainer_and_keeps_the_job_cancelled(
    kube: Kube, cluster: Cluster, operator: OperatorProcess, staged: dict[str, str]
) -> None:
    """What OpenAI's cancel endpoint needs: the job stops for good and can still be read."""
    kube.apply(finetunejob("stopped", staged["bucket"], staged["endpoint"], training=LONG))
    running = running_trainer(cluster, kube, "stopped")
    (pod,) = trainer_pods(cluster, "stopped")
    kube.patch_spec("stopped", {"cancel": True})  # a JSON merge patch, as `kubectl patch --type merge`
    status = kube.wait_phase("stopped", {"Cancelled", "Succeeded", "Failed"}, 60, operator.check_alive)
    assert status.phase == "Cancelled", status
    cancelled = conditions(status)["Cancelled"]
    assert (cancelled.status, cancelled.reason, cancelled.observed_generation) == ("True", "UserCancelled", 2)
    assert "Failed" not in conditions(status) and status.error is None
    assert status.completion_time is not None
    assert [c.step for c in status.checkpoints][: len(running.checkpoints)] == [c.step for c in running.checkpoints]
    wait_for(lambda: kube.children("stopped") == [], 30, "children to go", operator.check_alive)
    wait_for(lambda: cluster.pods("kubetune.io/finetunejob=stopped") == [], 60, "pods to go")
    # The trainer got SIGTERM (not SIGKILL) and checkpointed on its way out.
    log = cluster.log(pod["metadata"]["name"])
    assert "SIGTERM" in log or "Preempted" in log, log[-2000:]
    assert ("Normal", "UserCancelled") in kube.events("stopped")
    assert kube.get("stopped") is not None  # still there for `kubectl get` and the API to read

    # Terminal: un-cancelling is seen (observedGeneration moves) and changes nothing.
    kube.patch_spec("stopped", {"cancel": False})

    def seen_generation_3() -> FineTuneJobStatus | None:
        latest = kube.status("stopped")
        return latest if latest.observed_generation == 3 else None

    status = wait_for(seen_generation_3, 30, "generation 3 to be seen", operator.check_alive)
    assert status.phase == "Cancelled" and kube.jobs("stopped") == []
    metrics = operator.metrics()
    assert 'to_phase="Cancelled"' in metrics and 'kubetune_finetunejobs{phase="Cancelled"} 1.0' in metrics


def test_suspend_stops_the_trainer_and_resume_continues_from_its_checkpoint(
    kube: Kube, cluster: Cluster, operator: OperatorProcess, staged: dict[str, str]
) -> None:
    kube.apply(finetunejob("paused", staged["bucket"], staged["endpoint"], training=LONG))
    running_trainer(cluster, kube, "paused", with_checkpoint=False)
    kube.patch_spec("paused", {"suspend": True})
    status = kube.wait_phase("paused", {"Suspended"}, 60, operator.check_alive)
    wait_for(lambda: trainer_pods(cluster, "paused") == [], 120, "the trainer pod to stop")
    assert conditions(kube.status("paused"))["Suspended"].status == "True"
    assert kube.batch.read_namespaced_job("paused-train-1", "default").spec.suspend is True

    # Resume, and try to swap the base model on the way: suspend applies, the model change does not.
    kube.patch_spec("paused", {"suspend": False, "baseModel": {"uri": f"s3://{staged['bucket']}/models/other/"}})
    status = kube.wait_phase("paused", {"Succeeded", "Failed"}, TRAIN_TIMEOUT, operator.check_alive)
    assert status.phase == "Succeeded", status
    applied = conditions(status)["SpecApplied"]
    assert (applied.status, applied.reason) == ("False", "ImmutableFieldChanged")
    assert "spec.baseModel" in applied.message and applied.observed_generation == 3
    assert status.accepted_spec is not None and status.accepted_spec.base_model.uri.endswith("/models/tiny/")
    assert ("Warning", "ImmutableFieldChanged") in kube.events("paused")
    assert status.attempts == 1  # suspension is not a failure
    assert kube.jobs("paused") == ["paused-preflight", "paused-train-1"]
    second = [p for p in cluster.started_pods if p.startswith("paused-train-1")][-1]
    assert "resumed from checkpoint step" in cluster.log(second)
    assert ("Normal", "Suspended") in kube.events("paused")


def test_operator_restart_mid_job_converges_without_duplicates(
    kube: Kube, cluster: Cluster, operator: OperatorProcess, staged: dict[str, str]
) -> None:
    kube.apply(finetunejob("restart", staged["bucket"], staged["endpoint"], training={"maxSteps": 200}))
    running_trainer(cluster, kube, "restart", with_checkpoint=False)
    operator.stop(SIGKILL)  # no graceful shutdown: state must come from the cluster alone
    operator.start()
    status = kube.wait_phase("restart", {"Succeeded", "Failed"}, TRAIN_TIMEOUT, operator.check_alive)
    assert status.phase == "Succeeded", status
    assert kube.jobs("restart") == ["restart-preflight", "restart-train-1"]
    assert len([p for p in cluster.started_pods if p.startswith("restart-train-1")]) == 1
    assert status.attempts == 1
    succeeded = [e for e in kube.events("restart") if e[1] == "Succeeded"]
    assert succeeded == [("Normal", "Succeeded")]


def test_ttl_after_finished_deletes_the_job_and_its_children(
    kube: Kube, cluster: Cluster, operator: OperatorProcess, staged: dict[str, str]
) -> None:
    body = finetunejob("expiring", staged["bucket"], staged["endpoint"], ttlSecondsAfterFinished=2)
    body["spec"]["dataset"]["train"] = f"s3://{staged['bucket']}/data/broken.jsonl"
    kube.apply(body)
    kube.wait_phase("expiring", {"Failed"}, 120, operator.check_alive)
    assert kube.children("expiring") != []
    wait_for(lambda: kube.get("expiring") is None, 30, "ttlSecondsAfterFinished to delete the job")
    wait_for(lambda: kube.children("expiring") == [], 30, "children to go")


def test_queued_job_waits_for_kueue_to_admit_it(
    kube: Kube, cluster: Cluster, operator: OperatorProcess, staged: dict[str, str]
) -> None:
    body = finetunejob("queued", staged["bucket"], staged["endpoint"], queueName="gpu-queue")
    body["spec"]["preflight"] = {"enabled": False}
    kube.apply(body)
    status = kube.wait_phase("queued", {"Queued"}, 60, operator.check_alive)
    job = kube.batch.read_namespaced_job("queued-train-1", "default")
    assert job.spec.suspend is True and job.metadata.labels["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert cluster.pods("kubetune.io/finetunejob=queued") == []
    assert 'kubetune_finetunejobs{phase="Queued"} 1.0' in operator.metrics()
    # Kueue admits by un-suspending the Job; the operator follows.
    kube.batch.patch_namespaced_job(
        "queued-train-1", "default", {"spec": {"suspend": False}}, _content_type="application/merge-patch+json"
    )
    status = kube.wait_phase("queued", {"Succeeded", "Failed"}, TRAIN_TIMEOUT, operator.check_alive)
    assert status.phase == "Succeeded", status
    assert conditions(status)["Admitted"].status == "True"
    raw = kube.get("queued")
    assert raw is not None and json.loads(json.dumps(raw["status"]["conditions"]))  # plain JSON all the way


def test_a_pod_without_a_free_gpu_is_unschedulable_not_failed(
    kube: Kube, cluster: Cluster, operator: OperatorProcess, staged: dict[str, str]
) -> None:
    """The test node has no GPU, so a 1-GPU trainer pod stays Pending, as on a busy cluster."""
    body = finetunejob("waiting", staged["bucket"], staged["endpoint"], resources={"gpus": 1})
    body["spec"]["preflight"] = {"enabled": False}
    kube.apply(body)

    def unschedulable() -> FineTuneJobStatus | None:
        status = kube.status("waiting")
        return status if status.condition_is(ConditionType.UNSCHEDULABLE) else None

    status = wait_for(unschedulable, 60, "the Unschedulable condition", operator.check_alive)
    assert status.phase == "Initializing"
    assert "Insufficient nvidia.com/gpu" in conditions(status)["Unschedulable"].message
    assert ("Warning", "Unschedulable") in kube.events("waiting")
    assert status.error is None


H100_NODES = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}


def test_a_gpu_job_is_planned_for_its_gpu_type_on_cpu_before_its_gpu_pod(
    kube: Kube, cluster: Cluster, operator: OperatorProcess, staged: dict[str, str], kube_api: Any
) -> None:
    """The preflight runs on CPU; status.preflight.fit, a FitPlanned Event and the GPU-Hours column
    say what the job needs on an H100 before its GPU pod is even scheduled (here it never is)."""
    kube.apply(
        finetunejob("planned", staged["bucket"], staged["endpoint"], resources={"gpus": 1, "nodeSelector": H100_NODES})
    )

    def unschedulable() -> FineTuneJobStatus | None:
        status = kube.status("planned")
        return status if status.condition_is(ConditionType.UNSCHEDULABLE) else None

    status = wait_for(unschedulable, 120, "the trainer's Unschedulable condition", operator.check_alive)
    assert status.preflight is not None and status.preflight.fit is not None
    fit = status.preflight.fit
    assert (fit.gpu_type, fit.fits, fit.method) == ("H100-80GB", True, "lora")
    assert fit.gpu_hours is not None and fit.gpu_hours > 0 and fit.estimated_cost is None
    events = kube.events("planned")
    assert ("Normal", "FitPlanned") in events and ("Warning", "CostUnknown") in events
    wide = subprocess.run(
        ["kubectl", "--kubeconfig", str(kube_api.kubeconfig), "get", "ftj", "planned", "-o", "wide"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert wide[0].split()[-1] == "GPU-HOURS" and float(wide[1].split()[-1]) == pytest.approx(fit.gpu_hours)


def test_a_job_that_will_not_fit_its_gpus_fails_before_any_gpu_job(
    kube: Kube, cluster: Cluster, operator: OperatorProcess, staged: dict[str, str]
) -> None:
    """8,192 sequences of 512 tokens per micro-step on an L4 (4M tokens, 3 fp32 logits copies each):
    the preflight's plan says no, and names the cheapest fix."""
    body = finetunejob(
        "too-big",
        staged["bucket"],
        staged["endpoint"],
        training={"maxSeqLength": 512, "batchSize": 8192},
        resources={"gpus": 1, "nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-l4"}},
    )
    kube.apply(body)
    status = kube.wait_phase("too-big", {"Failed", "Succeeded"}, 120, operator.check_alive)
    assert status.phase == "Failed" and status.error is not None and status.error.reason == "WillNotFit"
    assert "does not fit on L4-24GB" in status.error.message and "training.batchSize:" in status.error.message
    assert kube.jobs("too-big") == ["too-big-preflight"], "no trainer Job: no GPU was requested"
    assert ("Warning", "WillNotFit") in kube.events("too-big")


def test_fail_on_warnings_fails_bad_data_before_any_gpu_job_with_a_warning_event_per_finding(
    kube: Kube, cluster: Cluster, operator: OperatorProcess, staged: dict[str, str], s3: Any
) -> None:
    """examples/bad-data (duplicates, leakage, truncation, empty answers, a mixed row) with
    preflight.failOnWarnings: the preflight's data-quality report fails the job (issue 13, item 1)."""
    bucket = staged["bucket"]
    for name in ("train.jsonl", "validation.jsonl"):
        s3.upload_file(str(EXAMPLES / "bad-data" / name), bucket, f"data/bad/{name}")
    body = finetunejob("bad-quality", bucket, staged["endpoint"], training={"maxSeqLength": 24})
    body["spec"]["dataset"] = {
        "train": f"s3://{bucket}/data/bad/train.jsonl",
        "validation": f"s3://{bucket}/data/bad/validation.jsonl",
        "format": "completion",
    }
    body["spec"]["preflight"] = {"failOnWarnings": True}
    kube.apply(body)
    status = kube.wait_phase("bad-quality", {"Failed", "Succeeded"}, 120, operator.check_alive)
    assert status.error is not None and status.error.reason == "DataQualityFailed", status
    assert status.error.message.startswith("preflight.failOnWarnings is true and the data-quality report has 8 warning")
    assert kube.jobs("bad-quality") == ["bad-quality-preflight"], "no trainer Job: no GPU was requested"
    validated = conditions(status)["DataValidated"]
    assert (validated.status, validated.reason) == ("False", "DataQualityFailed")
    preflight = status.preflight
    assert preflight is not None and preflight.quality is not None and preflight.quality.leaked_validation_rows == 3
    codes = [w.code for w in preflight.warnings or []]
    assert codes[:2] == ["TruncatedRows", "DroppedRows"] and len(codes) == 8

    # Events are posted after the status write that says Failed (kopf posts them in the background), so
    # a loaded machine can show the phase before all nine Events: wait for them, then count exactly.
    def all_posted() -> list[tuple[str, str]] | None:
        events = kube.events("bad-quality")
        return events if ("Warning", "DataQualityFailed") in events and len(events) >= 10 else None

    events = wait_for(all_posted, 60, "the data-quality Events", operator.check_alive)
    assert events.count(("Warning", "DataQualityWarning")) == 8
    assert ("Warning", "DataQualityFailed") in events


def test_namespaced_operator_ignores_other_namespaces(kube_api: Any, kube: Kube, tmp_path: Path) -> None:
    """`--namespace team-a` needs no cluster-wide lists (kopf's scanning is off) and sees only its namespace."""
    for namespace in ("team-a", "team-b"):
        kube.core.create_namespace({"metadata": {"name": namespace}})
    operator = operator_process(kube_api.kubeconfig, tmp_path / "operator.log", "--namespace", "team-a").start()
    try:
        for namespace in ("team-a", "team-b"):
            body = finetunejob("scoped", "bucket-x", "http://127.0.0.1:1")
            body["metadata"]["namespace"] = namespace
            body["spec"]["dataset"]["train"] = "data/train.jsonl"  # the operator's InvalidSpec
            kube.custom.create_namespaced_custom_object("kubetune.io", "v1alpha1", namespace, "finetunejobs", body)

        def phase(namespace: str) -> str | None:
            obj = kube.custom.get_namespaced_custom_object(
                "kubetune.io", "v1alpha1", namespace, "finetunejobs", "scoped"
            )
            return (obj.get("status") or {}).get("phase")

        wait_for(lambda: phase("team-a") == "Failed", 30, "team-a's job to be handled", operator.check_alive)
        assert phase("team-b") is None
        assert "Traceback" not in operator.log() and "[ERROR" not in operator.log()
    finally:
        operator.stop()
