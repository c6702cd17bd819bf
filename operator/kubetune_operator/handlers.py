"""kopf registrations. Each handler is a few lines: the work is in controller and decide.

- Indices keep every trainer/preflight Job and Pod in memory, keyed by the owning
  FineTuneJob, and wake that job's loop when one changes.
- One daemon per FineTuneJob runs its reconcile loop (observe, decide, apply, sleep).
- The delete handler (behind kopf's finalizer) cancels: it stops and removes the children.
  (spec.cancel stops a job and keeps it: that is a decision in decide.py, applied by the loop.)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, TypeVar

import kopf

from kubetune_api.spec import API_GROUP, API_VERSION, PLURAL
from kubetune_api.status import TERMINAL_PHASES, USER_CANCELLED, FineTuneJobStatus, Phase
from kubetune_operator.controller import Controller
from kubetune_operator.manifests import LABEL_JOB
from kubetune_operator.settings import OperatorSettings
from kubetune_operator.views import JobView, PodView, job_view, owner_key, pod_view

FINALIZER = f"{API_GROUP}/finalizer"
CHILD = {LABEL_JOB: kopf.PRESENT}


def controller_of(memo: Any) -> Controller:
    controller: Controller = memo.controller
    return controller


def ensure_controller(memo: Any) -> Controller:
    """`kubetune-operator` passes a controller in the memo; plain `kopf run -m` gets one from env."""
    if getattr(memo, "controller", None) is None:
        memo.controller = Controller.from_settings(OperatorSettings())
    return controller_of(memo)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    # Our own finalizer and annotation prefix; status stays entirely ours.
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=API_GROUP, key="last-handled-configuration"
    )
    # Watches end server-side and are re-established, so a silently dead connection
    # (a load balancer dropping it) cannot leave the operator blind.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.posting.level = logging.WARNING  # Events: ours, plus kopf's own warnings/errors
    controller = ensure_controller(memo)
    settings.execution.max_workers = controller.settings.api_workers
    if controller.settings.namespace:
        # Namespaced mode needs no cluster-wide list of namespaces or CRDs (least privilege).
        settings.scanning.disabled = True
    await controller.start()


@kopf.on.cleanup()
async def shutdown(memo: Any, **_: Any) -> None:
    await controller_of(memo).stop()


V = TypeVar("V")


def index_child(namespace: str | None, labels: Mapping[str, str], memo: Any, view: V) -> dict[Any, V]:
    """Index a child under its FineTuneJob, and wake that job's loop: something changed."""
    key = owner_key(namespace, dict(labels))
    if key is None:
        return {}
    controller_of(memo).wake(key)
    return {key: view}


@kopf.index("batch", "v1", "jobs", labels=CHILD)
def child_jobs(namespace: str | None, labels: Mapping[str, str], body: Any, memo: Any, **_: Any) -> dict[Any, JobView]:
    return index_child(namespace, labels, memo, job_view(dict(body)))


@kopf.index("", "v1", "pods", labels=CHILD)
def child_pods(namespace: str | None, labels: Mapping[str, str], body: Any, memo: Any, **_: Any) -> dict[Any, PodView]:
    return index_child(namespace, labels, memo, pod_view(dict(body)))


@kopf.index(API_GROUP, API_VERSION, PLURAL)
def finetunejob_generations(namespace: str | None, name: str, meta: Any, memo: Any, **_: Any) -> dict[Any, int]:
    """Wakes a job's loop when its spec changes (an index: kopf runs it quietly on every event)."""
    key, generation = (namespace or "", name), int(meta.get("generation") or 1)
    controller_of(memo).spec_changed(key, generation)
    return {key: generation}


@kopf.daemon(API_GROUP, API_VERSION, PLURAL, cancellation_timeout=10.0)
async def supervise(
    namespace: str | None,
    name: str,
    body: kopf.Body,
    stopped: kopf.DaemonStopped,
    memo: Any,
    **kwargs: Any,
) -> None:
    """The reconcile loop of one FineTuneJob, for as long as it exists."""
    # kopf passes every index by its function's name.
    jobs_index: kopf.Index[Any, JobView] = kwargs["child_jobs"]
    pods_index: kopf.Index[Any, PodView] = kwargs["child_pods"]
    controller = controller_of(memo)
    key = (namespace or "", name)

    def post_event(type_: str, reason: str, message: str) -> None:
        kopf.event(body, type=type_, reason=reason, message=message)

    while not stopped:
        if body.meta.get("deletionTimestamp"):
            return  # the delete handler takes over
        wait = await controller.reconcile(
            dict(body), list(jobs_index.get(key, [])), list(pods_index.get(key, [])), post_event
        )
        await controller.sleep(key, wait, stopped)


@kopf.on.delete(API_GROUP, API_VERSION, PLURAL)
async def cancel(namespace: str | None, name: str, body: kopf.Body, status: Any, memo: Any, **_: Any) -> None:
    """Deleting a FineTuneJob cancels it: its trainer gets SIGTERM (and checkpoints), then
    its Jobs, Services and ConfigMaps are removed."""
    controller = controller_of(memo)
    key = (namespace or "", name)
    phase = FineTuneJobStatus.model_validate(dict(status)).phase
    if phase not in TERMINAL_PHASES:
        kopf.event(
            body,
            type="Normal",
            reason=USER_CANCELLED,
            message="the FineTuneJob was deleted; stopping the trainer and removing its children",
        )
        controller.metrics.observe_phase(key, phase, Phase.CANCELLED, None)
    removed = await controller.kube.delete_children(*key)
    kopf.info(body, reason="Cleanup", message=f"removed {removed} children")
    controller.forget(key)
