"""Pure builders: a FineTuneJob's spec -> the Kubernetes objects that run it.

No API calls and no clocks here: same input, same objects. Handlers create what these
functions return, so every field the operator sets is unit-testable.

Children of a FineTuneJob, all owned by it (deleting the job deletes them):
    <name>-config-<attempt>     ConfigMap with trainer.json
    <name>-preflight            CPU Job: `kubetune-train --validate-only` (no GPU requested)
    <name>-train-<attempt>      GPU Job running the trainer (Indexed when nodes > 1)
    <name>-train-<attempt>      headless Service for multi-node rendezvous (nodes > 1)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import kopf

from kubetune_api.spec import API_GROUP, API_VERSION, KIND, CacheSpec, FineTuneJob, FineTuneJobSpec
from kubetune_api.trainer_config import RuntimeOptions, TrainerConfig, trainer_config_from_job
from kubetune_operator.settings import OperatorSettings

JSON = dict[str, Any]

LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_JOB = f"{API_GROUP}/finetunejob"
LABEL_ATTEMPT = f"{API_GROUP}/attempt"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"

CONFIG_DIR = "/etc/kubetune"
CONFIG_FILE = "trainer.json"
TERMINATION_LOG = "/dev/termination-log"
RUN_AS = 65532
PVC_SCHEME = "pvc://"
PVC_ROOT = "/mnt/pvc"
CACHE_DIR = "/cache"
MAX_NAME = 63
# `kubetune-train` as a module, for `accelerate launch -m` (multi-GPU and multi-node).
TRAINER_MODULE = "kubetune_trainer.cli.kubetune_train"


@dataclass(frozen=True)
class Owner:
    """The FineTuneJob that owns the children."""

    name: str
    namespace: str
    uid: str


def child_name(owner: str, suffix: str) -> str:
    """`<owner>-<suffix>`, shortened with a stable hash when it would exceed 63 characters."""
    name = f"{owner}-{suffix}"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    keep = MAX_NAME - len(suffix) - len(digest) - 2
    return f"{owner[:keep].rstrip('-.')}-{digest}-{suffix}"


def config_map_name(owner: str, attempt: int) -> str:
    return child_name(owner, f"config-{attempt}")


def trainer_job_name(owner: str, attempt: int) -> str:
    return child_name(owner, f"train-{attempt}")


def preflight_job_name(owner: str) -> str:
    return child_name(owner, "preflight")


def labels(owner: Owner, component: str, attempt: int | None = None) -> dict[str, str]:
    out = {
        LABEL_PART_OF: "kubetune",
        LABEL_MANAGED_BY: "kubetune-operator",
        LABEL_COMPONENT: component,
        LABEL_JOB: owner.name,
    }
    if attempt is not None:
        out[LABEL_ATTEMPT] = str(attempt)
    return out


def metadata(owner: Owner, name: str, component: str, attempt: int | None = None) -> JSON:
    """A child's metadata: labels, and kopf's controller owner reference to the FineTuneJob
    (so the garbage collector deletes children with it)."""
    meta: JSON = {"name": name, "namespace": owner.namespace, "labels": labels(owner, component, attempt)}
    owner_body: Any = {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "metadata": {"name": owner.name, "namespace": owner.namespace, "uid": owner.uid},
    }
    child: JSON = {"metadata": meta}
    kopf.append_owner_reference(child, owner=kopf.Body(owner_body))
    return meta


def cache_for(spec: FineTuneJobSpec, settings: OperatorSettings) -> CacheSpec | None:
    """The job's persistent cache claim: its own, else the operator's default, else none (an emptyDir)."""
    return spec.cache or settings.default_cache


def pod_runtime(settings: OperatorSettings, attempt: int, cache: CacheSpec | None = None) -> RuntimeOptions:
    """Where things live inside a trainer pod (matches the volumes below)."""
    return RuntimeOptions(
        cache_dir=CACHE_DIR,
        # The cap travels in trainer.json, the trainer's one input: the volume only says where.
        cache_size_limit_bytes=None if cache is None else cache.size_limit_bytes,
        work_dir="/tmp",
        metrics_port=settings.metrics_port,
        metrics_host="0.0.0.0",
        metrics_linger_seconds=settings.trainer_metrics_linger_seconds,
        termination_message_path=TERMINATION_LOG,
        progress_bar=False,
        device="auto",
        attempt=attempt,
    )


def config_map(owner: Owner, config: TrainerConfig, attempt: int) -> JSON:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(owner, config_map_name(owner.name, attempt), "config", attempt),
        "data": {CONFIG_FILE: config.to_json()},
    }


# -- pod pieces ---------------------------------------------------------------------------------


def _credentials_env(spec: FineTuneJobSpec) -> list[JSON]:
    """S3 credentials come only from the named Secret (or the pod's identity when none)."""
    secret = spec.storage.credentials_secret
    if not secret:
        return []
    keys = (("AWS_ACCESS_KEY_ID", False), ("AWS_SECRET_ACCESS_KEY", False), ("AWS_SESSION_TOKEN", True))
    return [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": optional}}}
        for key, optional in keys
    ]


def _restricted_container_security() -> JSON:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _pod_security() -> JSON:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pvc_claims(spec: FineTuneJobSpec) -> dict[str, bool]:
    """PersistentVolumeClaims named by pvc:// URIs -> whether the trainer writes to them."""
    inputs = [spec.base_model.uri, spec.dataset.train, spec.dataset.validation or ""]
    claims: dict[str, bool] = {}
    for uri, writes in [*((u, False) for u in inputs), (spec.output.uri, True)]:
        if uri.startswith(PVC_SCHEME):
            claim = uri[len(PVC_SCHEME) :].split("/", 1)[0]
            claims[claim] = claims.get(claim, False) or writes
    return claims


def _volumes(
    config_map: str,
    settings: OperatorSettings,
    shared_memory: bool,
    claims: dict[str, bool] | None = None,
    cache: CacheSpec | None = None,
) -> tuple[list[JSON], list[JSON]]:
    # A cache claim outlives the pod, so a retry finds the model staged; an emptyDir dies with it.
    cache_volume: JSON = (
        {"persistentVolumeClaim": {"claimName": cache.claim_name}}
        if cache is not None
        else {"emptyDir": {"sizeLimit": settings.cache_size_limit}}
    )
    volumes: list[JSON] = [
        {"name": "config", "configMap": {"name": config_map}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "cache", **cache_volume},
    ]
    mounts: list[JSON] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "cache", "mountPath": CACHE_DIR},
    ]
    for index, (claim, writes) in enumerate(sorted((claims or {}).items())):
        # The trainer resolves pvc://<claim>/<path> to $KUBETUNE_PVC_ROOT/<claim>/<path>.
        volumes.append({"name": f"pvc-{index}", "persistentVolumeClaim": {"claimName": claim, "readOnly": not writes}})
        mounts.append({"name": f"pvc-{index}", "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": not writes})
    if shared_memory:  # NCCL and dataloader workers need more than the default 64 MiB /dev/shm
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    return volumes, mounts


def _pod(container: JSON, volumes: list[JSON], service_account: str | None = None) -> JSON:
    """A run-once pod that meets the restricted Pod Security Standard and holds no API token.

    The container gets the restricted security context and reports through the
    termination-message file (falling back to its log tail if it dies before writing one).
    """
    container = {
        **container,
        "securityContext": _restricted_container_security(),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod: JSON = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": _pod_security(),
        "containers": [container],
        "volumes": volumes,
    }
    if service_account:
        # A cloud identity (IRSA, Workload Identity) injects its own projected token; the
        # Kubernetes API token stays unmounted.
        pod["serviceAccountName"] = service_account
    return pod


def trainer_command(gpus: int, nodes: int, rendezvous_port: int) -> list[str]:
    """Single process for one GPU (or CPU); `accelerate launch` (torchrun) for several GPUs or nodes.

    On CPU nodes (gpus: 0) each node runs one process and the ranks talk gloo: `--multi_gpu` is
    accelerate's name for "launch under torchrun", and the trainer picks gloo when it sees no GPU."""
    config = f"{CONFIG_DIR}/{CONFIG_FILE}"
    if gpus <= 1 and nodes == 1:
        return ["kubetune-train", "--config", config]
    launch = ["accelerate", "launch", "--multi_gpu", f"--num_processes={max(1, gpus) * nodes}"]
    if nodes > 1:
        launch += [
            f"--num_machines={nodes}",
            "--machine_rank=$(JOB_COMPLETION_INDEX)",
            "--main_process_ip=$(KUBETUNE_RENDEZVOUS_HOST)",
            f"--main_process_port={rendezvous_port}",
        ]
    return [*launch, "-m", TRAINER_MODULE, "--config", config]


def _resources(spec: FineTuneJobSpec) -> JSON:
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if spec.resources.cpu:
        requests["cpu"] = spec.resources.cpu
    if spec.resources.memory:
        requests["memory"] = spec.resources.memory
        limits["memory"] = spec.resources.memory
    if spec.resources.gpus:
        limits["nvidia.com/gpu"] = str(spec.resources.gpus)
    out: JSON = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _job(
    owner: Owner,
    name: str,
    component: str,
    attempt: int | None,
    pod: JSON,
    *,
    suspend: bool = False,
    active_deadline_seconds: int | None = None,
    extra_labels: dict[str, str] | None = None,
    indexed_nodes: int = 1,
) -> JSON:
    meta = metadata(owner, name, component, attempt)
    meta["labels"].update(extra_labels or {})
    spec: JSON = {
        # The operator counts attempts itself: it must tell user errors (never retried)
        # from infrastructure errors (retried, resuming from a checkpoint).
        "backoffLimit": 0,
        "suspend": suspend,
        "template": {"metadata": {"labels": labels(owner, component, attempt)}, "spec": pod},
    }
    if active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = active_deadline_seconds
    if indexed_nodes > 1:
        spec.update({"completionMode": "Indexed", "completions": indexed_nodes, "parallelism": indexed_nodes})
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": spec}


def trainer_job(
    owner: Owner,
    spec: FineTuneJobSpec,
    settings: OperatorSettings,
    attempt: int,
    active_deadline_seconds: int | None = None,
) -> JSON:
    """The GPU Job of one attempt. `active_deadline_seconds` is what is left of the job's
    deadline (retries must not restart the clock); it defaults to the whole deadline."""
    nodes, gpus = spec.resources.nodes, spec.resources.gpus
    name = trainer_job_name(owner.name, attempt)
    service = name if nodes > 1 else None
    volumes, mounts = _volumes(
        config_map_name(owner.name, attempt),
        settings,
        shared_memory=gpus > 0,
        claims=pvc_claims(spec),
        cache=cache_for(spec, settings),
    )
    env: list[JSON] = [*_credentials_env(spec), {"name": "KUBETUNE_ATTEMPT", "value": str(attempt)}]
    if service is not None:
        env.append({"name": "KUBETUNE_RENDEZVOUS_HOST", "value": f"{name}-0.{service}"})
    container: JSON = {
        "name": "trainer",
        "image": spec.image or settings.trainer_image,
        "imagePullPolicy": settings.image_pull_policy,
        # `args`, not `command`: the image's ENTRYPOINT (tini) stays PID 1, forwards SIGTERM
        # and reaps what `accelerate launch` spawns.
        "args": trainer_command(gpus, nodes, settings.rendezvous_port),
        "env": env,
        "ports": [{"name": "metrics", "containerPort": settings.metrics_port}],
        "resources": _resources(spec),
        "volumeMounts": mounts,
    }
    pod = _pod(container, volumes, spec.service_account_name)
    # Time for the SIGTERM checkpoint to reach S3 before the kubelet sends SIGKILL.
    pod["terminationGracePeriodSeconds"] = 300
    if spec.resources.node_selector:
        pod["nodeSelector"] = dict(spec.resources.node_selector)
    if spec.resources.tolerations:
        pod["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in spec.resources.tolerations]
    if service is not None:
        pod["subdomain"] = service
    queue = {KUEUE_QUEUE_LABEL: spec.queue_name} if spec.queue_name else {}
    return _job(
        owner,
        name,
        "trainer",
        attempt,
        pod,
        # Kueue admits a job by un-suspending it, so a queued job is created suspended.
        suspend=spec.suspend or bool(spec.queue_name),
        active_deadline_seconds=active_deadline_seconds or spec.active_deadline_seconds,
        extra_labels=queue,
        indexed_nodes=nodes,
    )


def headless_service(owner: Owner, attempt: int, rendezvous_port: int) -> JSON:
    """Stable DNS names (<job>-<index>.<service>) for multi-node rendezvous."""
    name = trainer_job_name(owner.name, attempt)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(owner, name, "trainer", attempt),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": labels(owner, "trainer", attempt),
            "ports": [{"name": "rendezvous", "port": rendezvous_port}],
        },
    }


def preflight_job(owner: Owner, spec: FineTuneJobSpec, settings: OperatorSettings) -> JSON:
    """A CPU-only Job that validates every row and counts tokens: no GPU is requested."""
    volumes, mounts = _volumes(
        config_map_name(owner.name, 1),
        settings,
        shared_memory=False,
        claims=pvc_claims(spec),
        cache=cache_for(spec, settings),
    )
    container: JSON = {
        "name": "preflight",
        "image": settings.preflight_image_or_default,
        "imagePullPolicy": settings.image_pull_policy,
        "args": [
            "kubetune-train",
            "--config",
            f"{CONFIG_DIR}/{CONFIG_FILE}",
            "--validate-only",
            # Plan for where training will run, not for this CPU pod.
            "--plan-for",
            "cuda" if spec.resources.gpus > 0 else "cpu",
            f"--world-size={max(1, spec.resources.gpus) * spec.resources.nodes}",
        ],
        "env": _credentials_env(spec),
        "resources": {
            "requests": {"cpu": settings.preflight_cpu, "memory": settings.preflight_memory},
            "limits": {"memory": settings.preflight_memory},
        },
        "volumeMounts": mounts,
    }
    pod = _pod(container, volumes, spec.service_account_name)
    return _job(owner, preflight_job_name(owner.name), "preflight", None, pod, active_deadline_seconds=3600)


# -- what one reconcile step creates ---------------------------------------------------------------


def trainer_config(owner: Owner, spec: FineTuneJobSpec, settings: OperatorSettings, attempt: int) -> TrainerConfig:
    job = FineTuneJob.model_validate(
        {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": KIND,
            "metadata": {"name": owner.name, "namespace": owner.namespace},
            "spec": spec.model_dump(by_alias=True, mode="json", exclude_none=True),
        },
        by_alias=True,
        by_name=False,
    )
    return trainer_config_from_job(job, pod_runtime(settings, attempt, cache_for(spec, settings)))


def preflight_objects(owner: Owner, spec: FineTuneJobSpec, settings: OperatorSettings) -> list[JSON]:
    """The first attempt's ConfigMap (the preflight reads the same trainer.json) and the preflight Job."""
    return [config_map(owner, trainer_config(owner, spec, settings, 1), 1), preflight_job(owner, spec, settings)]


def attempt_objects(
    owner: Owner, spec: FineTuneJobSpec, settings: OperatorSettings, attempt: int, deadline_seconds: int | None
) -> list[JSON]:
    """ConfigMap, headless Service (multi-node) and Job of one attempt, in creation order."""
    objects = [config_map(owner, trainer_config(owner, spec, settings, attempt), attempt)]
    if spec.resources.nodes > 1:
        objects.append(headless_service(owner, attempt, settings.rendezvous_port))
    objects.append(trainer_job(owner, spec, settings, attempt, deadline_seconds))
    return objects
