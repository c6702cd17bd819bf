"""Pure builders: FineTuneJob spec -> ConfigMap, preflight Job, trainer Job, headless Service."""

from __future__ import annotations

import importlib.util
import json
from typing import Any

import pytest

from kubetune_api.trainer_config import TrainerConfig, load_manifest, trainer_config_from_job
from kubetune_operator.manifests import (
    KUEUE_QUEUE_LABEL,
    LABEL_JOB,
    TRAINER_MODULE,
    Owner,
    attempt_objects,
    child_name,
    config_map,
    headless_service,
    pod_runtime,
    preflight_job,
    preflight_objects,
    trainer_command,
    trainer_job,
)
from kubetune_operator.settings import OperatorSettings

OWNER = Owner(name="support-bot", namespace="team-a", uid="1234-uid")
SETTINGS = OperatorSettings(trainer_image="registry.local/kubetune-trainer:1")


def job(**spec_overrides: Any) -> Any:
    spec: dict[str, Any] = {
        "baseModel": {"uri": "s3://models/llama/"},
        "dataset": {"train": "s3://data/train.jsonl"},
        "output": {"uri": "s3://artifacts/run/"},
        "storage": {"credentialsSecret": "s3-creds"},
        "resources": {"gpus": 1},
    }
    spec.update(spec_overrides)
    return load_manifest(
        {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "support-bot"}, "spec": spec}
    )


def container(manifest: dict[str, Any]) -> dict[str, Any]:
    return dict(manifest["spec"]["template"]["spec"]["containers"][0])


def test_child_names_fit_63_characters_and_are_stable() -> None:
    long = "a" * 80
    name = child_name(long, "train-12")
    assert len(name) <= 63 and name.endswith("-train-12")
    assert name == child_name(long, "train-12")
    assert child_name("short", "preflight") == "short-preflight"


def test_config_map_carries_the_trainer_config_for_the_pod() -> None:
    ftj = job()
    config = trainer_config_from_job(ftj, pod_runtime(SETTINGS, attempt=2))
    cm = config_map(OWNER, config, attempt=2)
    assert cm["metadata"]["name"] == "support-bot-config-2"
    parsed = TrainerConfig.model_validate(json.loads(cm["data"]["trainer.json"]))
    assert parsed.runtime.termination_message_path == "/dev/termination-log"
    assert parsed.runtime.metrics_port == SETTINGS.metrics_port and parsed.runtime.attempt == 2
    # The Secret's name may appear; its keys and values never do.
    assert "AWS_SECRET_ACCESS_KEY" not in cm["data"]["trainer.json"]


def test_every_child_is_owned_by_the_finetunejob() -> None:
    for manifest in (trainer_job(OWNER, job().spec, SETTINGS, 1), preflight_job(OWNER, job().spec, SETTINGS)):
        [ref] = manifest["metadata"]["ownerReferences"]
        assert ref == {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "name": "support-bot",
            "uid": "1234-uid",
            "controller": True,
            "blockOwnerDeletion": True,
        }
        assert manifest["metadata"]["labels"][LABEL_JOB] == "support-bot"


def test_trainer_pod_meets_the_restricted_pod_security_standard() -> None:
    manifest = trainer_job(OWNER, job().spec, SETTINGS, 1)
    pod = manifest["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container(manifest)["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"] for m in container(manifest)["volumeMounts"]}
    assert {"/etc/kubetune", "/tmp", "/cache", "/dev/shm"} <= mounts


def test_credentials_come_only_from_the_secret() -> None:
    env = container(trainer_job(OWNER, job().spec, SETTINGS, 1))["env"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env if "valueFrom" in e}
    assert refs["AWS_ACCESS_KEY_ID"] == {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID", "optional": False}
    assert refs["AWS_SESSION_TOKEN"]["optional"] is True
    assert all("value" not in e for e in env if e["name"].startswith("AWS_"))
    no_secret = job(storage={})
    assert not [e for e in container(trainer_job(OWNER, no_secret.spec, SETTINGS, 1))["env"] if "valueFrom" in e]


def test_gpu_limits_node_selector_tolerations_and_image() -> None:
    ftj = job(
        resources={
            "gpus": 4,
            "memory": "64Gi",
            "cpu": "8",
            "nodeSelector": {"gpu": "h100"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
        image="registry.local/custom:2",
    )
    manifest = trainer_job(OWNER, ftj.spec, SETTINGS, 1)
    pod, c = manifest["spec"]["template"]["spec"], container(manifest)
    assert c["resources"]["limits"] == {"memory": "64Gi", "nvidia.com/gpu": "4"}
    assert c["resources"]["requests"] == {"cpu": "8", "memory": "64Gi"}
    assert pod["nodeSelector"] == {"gpu": "h100"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert c["image"] == "registry.local/custom:2"
    assert c["args"][:3] == ["accelerate", "launch", "--multi_gpu"] and "--num_processes=4" in c["args"]


def test_single_gpu_runs_the_trainer_directly_and_operator_owns_retries() -> None:
    manifest = trainer_job(OWNER, job().spec, SETTINGS, 3)
    assert container(manifest)["args"] == ["kubetune-train", "--config", "/etc/kubetune/trainer.json"]
    assert manifest["spec"]["backoffLimit"] == 0
    assert manifest["spec"]["activeDeadlineSeconds"] == 86_400
    assert manifest["metadata"]["name"] == "support-bot-train-3"
    assert "completionMode" not in manifest["spec"]


def test_multi_node_is_an_indexed_job_with_a_headless_service() -> None:
    ftj = job(resources={"gpus": 8, "nodes": 2})
    manifest = trainer_job(OWNER, ftj.spec, SETTINGS, 1)
    spec = manifest["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    assert spec["template"]["spec"]["subdomain"] == "support-bot-train-1"
    command = container(manifest)["args"]
    assert "--num_processes=16" in command and "--num_machines=2" in command
    assert "--machine_rank=$(JOB_COMPLETION_INDEX)" in command
    env = {e["name"]: e.get("value") for e in container(manifest)["env"]}
    assert env["KUBETUNE_RENDEZVOUS_HOST"] == "support-bot-train-1-0.support-bot-train-1"
    service = headless_service(OWNER, 1, SETTINGS.rendezvous_port)
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == spec["template"]["metadata"]["labels"]
    assert f"--main_process_port={SETTINGS.rendezvous_port}" in command
    assert service["spec"]["ports"] == [{"name": "rendezvous", "port": SETTINGS.rendezvous_port}]


def test_cpu_nodes_run_one_process_each_under_torchrun() -> None:
    """gpus: 0 on several nodes: one gloo rank per pod, rendezvous on the operator's port."""
    ftj = job(resources={"gpus": 0, "nodes": 2})
    settings = SETTINGS.model_copy(update={"rendezvous_port": 31234})
    objects = attempt_objects(OWNER, ftj.spec, settings, 1, None)
    assert [o["kind"] for o in objects] == ["ConfigMap", "Service", "Job"]
    command = container(objects[2])["args"]
    assert "--num_processes=2" in command and "--num_machines=2" in command
    assert "--main_process_port=31234" in command
    assert objects[1]["spec"]["ports"] == [{"name": "rendezvous", "port": 31234}]
    assert "nvidia.com/gpu" not in json.dumps(container(objects[2])["resources"])


@pytest.mark.parametrize(
    ("suspend", "queue", "created_suspended"), [(False, None, False), (True, None, True), (False, "gpu-queue", True)]
)
def test_suspend_and_kueue_queue(suspend: bool, queue: str | None, created_suspended: bool) -> None:
    ftj = job(suspend=suspend, **({"queueName": queue} if queue else {}))
    manifest = trainer_job(OWNER, ftj.spec, SETTINGS, 1)
    assert manifest["spec"]["suspend"] is created_suspended
    assert manifest["metadata"]["labels"].get(KUEUE_QUEUE_LABEL) == queue


def test_preflight_requests_no_gpu_and_validates_only() -> None:
    manifest = preflight_job(OWNER, job(resources={"gpus": 8}).spec, SETTINGS)
    c = container(manifest)
    assert "nvidia.com/gpu" not in json.dumps(c["resources"])
    assert "--validate-only" in c["args"]
    # The plan (auto batch size, steps, memory) is for the 8 GPUs training will use, not this pod.
    assert c["args"][c["args"].index("--plan-for") + 1] == "cuda"
    assert "--world-size=8" in c["args"]
    assert manifest["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_trainer_command_shapes() -> None:
    assert trainer_command(0, 1, 29500)[0] == "kubetune-train"
    assert trainer_command(1, 1, 29500)[0] == "kubetune-train"
    assert "--num_processes=2" in trainer_command(2, 1, 29500)
    launched = trainer_command(2, 1, 29500)
    assert launched[launched.index("-m") + 1] == TRAINER_MODULE == "kubetune_trainer.cli.kubetune_train"
    assert importlib.util.find_spec(TRAINER_MODULE) is not None  # `accelerate launch -m` can find it


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBETUNE_TRAINER_IMAGE", "x:1")
    monkeypatch.setenv("KUBETUNE_POLL_INTERVAL_SECONDS", "5")
    settings = OperatorSettings()
    assert settings.trainer_image == "x:1" and settings.poll_interval_seconds == 5.0
    assert settings.preflight_image_or_default == "x:1"


def test_pvc_uris_mount_their_claims_read_only_unless_written() -> None:
    ftj = job(
        baseModel={"uri": "pvc://models/llama/"},
        dataset={"train": "pvc://data/train.jsonl"},
        output={"uri": "pvc://data/out/"},
    )
    spec = trainer_job(OWNER, ftj.spec, SETTINGS, 1)["spec"]["template"]["spec"]
    claims = {v["persistentVolumeClaim"]["claimName"]: v for v in spec["volumes"] if "persistentVolumeClaim" in v}
    assert claims["models"]["persistentVolumeClaim"]["readOnly"] is True
    assert claims["data"]["persistentVolumeClaim"]["readOnly"] is False  # the output goes there
    mounts = {m["mountPath"]: m for m in spec["containers"][0]["volumeMounts"]}
    assert mounts["/mnt/pvc/models"]["readOnly"] is True and mounts["/mnt/pvc/data"]["readOnly"] is False


def test_attempt_objects_are_config_then_job_and_carry_the_remaining_deadline() -> None:
    objects = attempt_objects(OWNER, job().spec, SETTINGS, attempt=3, deadline_seconds=1200)
    assert [o["kind"] for o in objects] == ["ConfigMap", "Job"]
    assert objects[1]["metadata"]["name"] == "support-bot-train-3"
    assert objects[1]["spec"]["activeDeadlineSeconds"] == 1200
    config = json.loads(objects[0]["data"]["trainer.json"])
    assert config["runtime"]["attempt"] == 3 and config["job_name"] == "support-bot"
    multi = attempt_objects(OWNER, job(resources={"gpus": 8, "nodes": 2}).spec, SETTINGS, 1, None)
    assert [o["kind"] for o in multi] == ["ConfigMap", "Service", "Job"]


def test_preflight_objects_share_the_first_attempts_config() -> None:
    config, preflight = preflight_objects(OWNER, job().spec, SETTINGS)
    volume = next(v for v in preflight["spec"]["template"]["spec"]["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == config["metadata"]["name"] == "support-bot-config-1"


def test_service_account_gives_pods_a_cloud_identity_without_an_api_token() -> None:
    ftj = job(serviceAccountName="s3-reader", storage={})
    for manifest in (trainer_job(OWNER, ftj.spec, SETTINGS, 1), preflight_job(OWNER, ftj.spec, SETTINGS)):
        pod = manifest["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == "s3-reader"
        assert pod["automountServiceAccountToken"] is False
        assert "AWS_ACCESS_KEY_ID" not in json.dumps(pod)
    assert "serviceAccountName" not in trainer_job(OWNER, job().spec, SETTINGS, 1)["spec"]["template"]["spec"]


# -- the persistent download cache (issue 10, item 7) ------------------------------------------------


def cache_volume(manifest: dict[str, Any]) -> dict[str, Any]:
    pod = manifest["spec"]["template"]["spec"]
    [mount] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "cache"]
    assert mount == {"name": "cache", "mountPath": "/cache"}  # where RuntimeOptions.cache_dir points
    [volume] = [v for v in pod["volumes"] if v["name"] == "cache"]
    return dict(volume)


def test_without_a_cache_claim_each_attempt_gets_an_empty_dir() -> None:
    for manifest in (trainer_job(OWNER, job().spec, SETTINGS, 1), preflight_job(OWNER, job().spec, SETTINGS)):
        assert cache_volume(manifest) == {"name": "cache", "emptyDir": {"sizeLimit": SETTINGS.cache_size_limit}}
    config = json.loads(attempt_objects(OWNER, job().spec, SETTINGS, 1, None)[0]["data"]["trainer.json"])
    assert config["runtime"]["cache_size_limit_bytes"] is None


def test_a_cache_claim_replaces_the_empty_dir_in_trainer_and_preflight_and_its_cap_goes_to_the_trainer() -> None:
    spec = job(cache={"claimName": "model-cache", "sizeLimit": "500Gi"}).spec
    for manifest in (trainer_job(OWNER, spec, SETTINGS, 2), preflight_job(OWNER, spec, SETTINGS)):
        assert cache_volume(manifest) == {"name": "cache", "persistentVolumeClaim": {"claimName": "model-cache"}}
    for objects in (attempt_objects(OWNER, spec, SETTINGS, 2, None), preflight_objects(OWNER, spec, SETTINGS)):
        config = TrainerConfig.model_validate(json.loads(objects[0]["data"]["trainer.json"]))
        assert config.runtime.cache_dir == "/cache" and config.runtime.cache_size_limit_bytes == 500 * 1024**3


def test_the_operators_default_cache_claim_applies_unless_the_job_names_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KUBETUNE_CACHE_CLAIM_NAME", "shared-models")
    monkeypatch.setenv("KUBETUNE_CACHE_CLAIM_SIZE_LIMIT", "2Ti")
    settings = OperatorSettings()
    default = trainer_job(OWNER, job().spec, settings, 1)
    assert cache_volume(default)["persistentVolumeClaim"] == {"claimName": "shared-models"}
    config = json.loads(attempt_objects(OWNER, job().spec, settings, 1, None)[0]["data"]["trainer.json"])
    assert config["runtime"]["cache_size_limit_bytes"] == 2 * 1024**4
    own = job(cache={"claimName": "team-cache"}).spec  # no sizeLimit: no eviction
    assert cache_volume(trainer_job(OWNER, own, settings, 1))["persistentVolumeClaim"] == {"claimName": "team-cache"}
    config = json.loads(attempt_objects(OWNER, own, settings, 1, None)[0]["data"]["trainer.json"])
    assert config["runtime"]["cache_size_limit_bytes"] is None


def test_a_bad_default_cache_size_is_refused_at_start_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    monkeypatch.setenv("KUBETUNE_CACHE_CLAIM_SIZE_LIMIT", "2TB")
    with pytest.raises(ValidationError, match=r"cache_claim_size_limit\n.*'2TB' is not a Kubernetes quantity"):
        OperatorSettings()
