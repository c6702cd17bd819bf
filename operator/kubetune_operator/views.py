"""Compact, immutable views of a FineTuneJob's children (Jobs and Pods).

The operator keeps these in kopf indices, keyed by the owning FineTuneJob, so a reconcile
reads its children from memory instead of listing them from the API. Building a view is
pure: a dict from the API in, a frozen dataclass out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kubetune_api.status import parse_rfc3339
from kubetune_operator.manifests import LABEL_ATTEMPT, LABEL_COMPONENT, LABEL_JOB
from kubetune_operator.pod_outcome import PodObservation, observe_pod

JSON = dict[str, Any]
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


def owner_key(namespace: str | None, labels: dict[str, str]) -> tuple[str, str] | None:
    """(namespace, FineTuneJob name) for a child, from its kubetune labels."""
    name = labels.get(LABEL_JOB)
    return (namespace or "", name) if name else None


def _attempt(labels: dict[str, str]) -> int | None:
    try:
        return int(labels[LABEL_ATTEMPT])
    except (KeyError, ValueError):
        return None


@dataclass(frozen=True)
class JobView:
    name: str
    component: str  # preflight | trainer
    attempt: int | None
    suspended: bool
    complete: bool
    failed: bool
    failure_reason: str | None  # DeadlineExceeded, BackoffLimitExceeded, ...
    failure_message: str | None
    active: int
    start_time: str | None
    deleting: bool


def job_view(job: JSON) -> JobView:
    meta, spec, status = job.get("metadata") or {}, job.get("spec") or {}, job.get("status") or {}
    labels = meta.get("labels") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    failed = conditions.get("Failed") or {}
    return JobView(
        name=meta.get("name", ""),
        component=labels.get(LABEL_COMPONENT, ""),
        attempt=_attempt(labels),
        suspended=bool(spec.get("suspend")),
        complete="Complete" in conditions,
        failed="Failed" in conditions,
        failure_reason=failed.get("reason"),
        failure_message=failed.get("message"),
        active=int(status.get("active") or 0),
        start_time=status.get("startTime"),
        deleting=bool(meta.get("deletionTimestamp")),
    )


@dataclass(frozen=True)
class PodView:
    name: str
    job_name: str
    component: str
    attempt: int | None
    index: int
    ip: str | None
    metrics_port: int | None
    created: str  # RFC 3339, which sorts as time does
    started_at: datetime | None
    finished_at: datetime | None
    observation: PodObservation
    # metadata.deletionTimestamp: when the kubelet's grace period ends and the pod should be gone.
    deletion_deadline: datetime | None = None

    @property
    def deleting(self) -> bool:
        return self.deletion_deadline is not None

    @property
    def running(self) -> bool:
        return self.observation.phase == "Running" and not self.deleting

    @property
    def finished(self) -> bool:
        return self.observation.phase in {"Succeeded", "Failed"} or self.observation.exit_code is not None


def _metrics_port(pod: JSON) -> int | None:
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == "metrics":
                return int(port["containerPort"])
    return None


def pod_view(pod: JSON) -> PodView:
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    container: JSON = next(iter(status.get("containerStatuses") or []), {})
    state = container.get("state") or {}
    running, terminated = state.get("running") or {}, state.get("terminated") or {}
    index = labels.get(COMPLETION_INDEX) or annotations.get(COMPLETION_INDEX) or "0"
    return PodView(
        name=meta.get("name", ""),
        job_name=labels.get("job-name") or labels.get("batch.kubernetes.io/job-name", ""),
        component=labels.get(LABEL_COMPONENT, ""),
        attempt=_attempt(labels),
        index=int(index) if str(index).isdigit() else 0,
        ip=status.get("podIP"),
        metrics_port=_metrics_port(pod),
        created=meta.get("creationTimestamp") or "",
        started_at=parse_rfc3339(running.get("startedAt") or terminated.get("startedAt")),
        finished_at=parse_rfc3339(terminated.get("finishedAt")),
        observation=observe_pod(pod),
        deletion_deadline=parse_rfc3339(meta.get("deletionTimestamp")),
    )


def latest_pod(pods: list[PodView]) -> PodView | None:
    return max(pods, key=lambda p: p.created, default=None)


def progress_url(attempt: int, pods: tuple[PodView, ...]) -> str | None:
    """The attempt's rank-0 trainer /progress endpoint, while it runs."""
    candidates = [
        p
        for p in pods
        if p.component == "trainer" and p.attempt == attempt and p.index == 0 and p.running and p.ip and p.metrics_port
    ]
    pod = latest_pod(candidates)
    if pod is None:
        return None
    host = f"[{pod.ip}]" if pod.ip and ":" in pod.ip else pod.ip
    return f"http://{host}:{pod.metrics_port}/progress"
