"""Applies decisions: the thin, effectful half of the operator.

One `Controller` serves every FineTuneJob. Each job has a kopf daemon that loops:
observe (indices + /progress) -> decide (pure) -> apply (API calls) -> wait for a wakeup
(a child or the job changed) or the next poll.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp
from pydantic import ValidationError

from kubetune_api.protocol import ProgressReport
from kubetune_api.spec import FineTuneJobSpec
from kubetune_api.status import ConditionType, FineTuneJobStatus, GateOutcome, Phase
from kubetune_operator import manifests
from kubetune_operator.decide import Decision, Snapshot, decide
from kubetune_operator.kube import Kube, load_config
from kubetune_operator.metrics import OperatorMetrics
from kubetune_operator.patching import merge_patch
from kubetune_operator.settings import OperatorSettings
from kubetune_operator.views import JobView, PodView, progress_url

log = logging.getLogger(__name__)
JSON = dict[str, Any]
Key = tuple[str, str]
PostEvent = Callable[[str, str, str], None]
ERROR_BACKOFF_SECONDS = 5.0
RECENT_CREATE_SECONDS = 30.0


class Controller:
    def __init__(self, settings: OperatorSettings, kube: Kube, metrics: OperatorMetrics) -> None:
        self.settings = settings
        self.kube = kube
        self.metrics = metrics
        self.http: aiohttp.ClientSession | None = None
        self._wakeups: dict[Key, asyncio.Event] = {}
        # The status this process last wrote, per job. The operator is the only writer of
        # status, and the watch stream may lag behind our own patch: deciding from the
        # stale copy would repeat Events. A restarted operator starts from the API's copy.
        # Kept as compact JSON: a status holds the accepted spec, and as nested dicts that
        # costs several times more memory per job.
        self._written: dict[Key, str] = {}
        self._generations: dict[Key, int] = {}
        # Children this process created recently: the next reconcile often runs before the
        # watch delivers them to the index, and a second create would only earn a 409.
        self._recent_creates: dict[tuple[str, str, str], float] = {}

    @classmethod
    def from_settings(cls, settings: OperatorSettings, metrics: OperatorMetrics | None = None) -> Controller:
        """The controller against the cluster the environment points at (in-cluster or kubeconfig)."""
        return cls(settings, Kube(load_config(), settings.api_workers), metrics or OperatorMetrics())

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.settings.progress_timeout_seconds)
        self.http = aiohttp.ClientSession(timeout=timeout)

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.close()
        self.kube.close()

    # -- wakeups -------------------------------------------------------------------------------

    def wake(self, key: Key) -> None:
        event = self._wakeups.get(key)
        if event is not None:
            event.set()

    def spec_changed(self, key: Key, generation: int) -> None:
        """Wake a job's loop when its spec (generation) moved, not on our own status writes."""
        if self._generations.get(key) != generation:
            self.wake(key)

    async def sleep(self, key: Key, timeout: float | None, stopped: Any) -> None:
        """Until woken, stopped, or `timeout` seconds (None: until woken or stopped)."""
        event = self._wakeups.setdefault(key, asyncio.Event())
        waiters = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(stopped.wait())]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            event.clear()

    def forget(self, key: Key) -> None:
        self._wakeups.pop(key, None)
        self._written.pop(key, None)
        self._generations.pop(key, None)
        self.metrics.forget(key)

    # -- one reconcile -------------------------------------------------------------------------

    async def reconcile(
        self, body: JSON, jobs: Iterable[JobView], pods: Iterable[PodView], post_event: PostEvent
    ) -> float | None:
        """Observe, decide, apply. Returns seconds until the next look (None: only on a wakeup)."""
        meta = body.get("metadata") or {}
        key: Key = (meta.get("namespace") or "", meta["name"])
        started = time.perf_counter()
        try:
            written = self._written.get(key)
            stored: JSON = json.loads(written) if written else copy.deepcopy(dict(body.get("status") or {}))
            status = FineTuneJobStatus.model_validate(stored)
            pod_views = tuple(pods)
            generation = int(meta.get("generation") or 1)
            self._generations[key] = generation  # events from here on about this generation need no wakeup
            snapshot = Snapshot(
                name=key[1],
                namespace=key[0],
                generation=generation,
                spec=copy.deepcopy(dict(body.get("spec") or {})),
                status=status,
                jobs=tuple(jobs),
                pods=pod_views,
                progress=await self._progress(progress_url(status.attempts or 0, pod_views)),
            )
            decision = decide(snapshot, self.settings)
            await self._apply(key, meta, stored, decision, post_event)
            self._record(key, status, decision)
            return decision.requeue_after
        except Exception:
            self.metrics.reconcile_errors.inc()
            log.exception("reconcile of %s/%s failed; retrying in %ss", *key, ERROR_BACKOFF_SECONDS)
            return ERROR_BACKOFF_SECONDS
        finally:
            self.metrics.reconcile_duration.observe(time.perf_counter() - started)

    async def _progress(self, url: str | None) -> ProgressReport | None:
        """The trainer's ProgressReport; None when it cannot be had (a missed poll is not an error)."""
        if url is None or self.http is None:
            return None
        try:
            async with self.http.get(url) as response:
                if response.status != 200:
                    return None
                return ProgressReport.model_validate_json(await response.read())
        except (aiohttp.ClientError, TimeoutError, ValidationError) as exc:
            log.debug("no progress from %s: %s", url, exc)
            return None

    async def _apply(self, key: Key, meta: JSON, old: JSON, decision: Decision, post_event: PostEvent) -> None:
        namespace, name = key
        spec = decision.spec
        owner = manifests.Owner(name=name, namespace=namespace, uid=meta.get("uid", ""))
        if decision.create_preflight and spec is not None:
            await self._create_all(manifests.preflight_objects(owner, spec, self.settings))
        if decision.create_attempt is not None and spec is not None:
            await self._create_attempt(owner, spec, decision)
        for job_name, suspended in decision.suspend.items():
            await self.kube.set_job_suspended(namespace, job_name, suspended)
        for job_name in decision.delete_jobs:
            await self.kube.delete_job(namespace, job_name)
        if decision.delete_children:
            # Before the status write: if a delete fails, the job is not yet Cancelled and the
            # next reconcile deletes again (a Cancelled job is never reconciled into action).
            removed = await self.kube.delete_children(namespace, name)
            log.info("%s/%s cancelled: removed %d children", namespace, name, removed)

        new = decision.status.to_wire()
        patch = merge_patch(old, new)
        if patch:
            await self.kube.patch_status(namespace, name, patch)
            self._written[key] = json.dumps(new, separators=(",", ":"))
        for event in decision.events:
            post_event(event.type, event.reason, event.message)
        if decision.delete_self:
            log.info("deleting %s/%s: ttlSecondsAfterFinished passed", namespace, name)
            await self.kube.delete_finetunejob(namespace, name)

    async def _create_attempt(self, owner: manifests.Owner, spec: FineTuneJobSpec, decision: Decision) -> None:
        assert decision.create_attempt is not None
        objects = manifests.attempt_objects(
            owner, spec, self.settings, decision.create_attempt, decision.attempt_deadline_seconds
        )
        await self._create_all(objects)

    async def _create_all(self, objects: list[JSON]) -> None:
        now = time.monotonic()
        for key, created in list(self._recent_creates.items()):
            if now - created > RECENT_CREATE_SECONDS:
                del self._recent_creates[key]
        for obj in objects:  # in order: a Job never exists without its ConfigMap
            key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
            if key in self._recent_creates:
                continue
            if await self.kube.create(obj):
                self.metrics.children_created.labels(kind=obj["kind"]).inc()
            self._recent_creates[key] = now

    def _record(self, key: Key, before: FineTuneJobStatus, decision: Decision) -> None:
        """Log and count what changed between the status decide() read and the one it wrote."""
        status, old_phase = decision.status, before.phase
        new_phase = status.phase or Phase.PENDING
        queued_since = None
        if new_phase == Phase.QUEUED:
            admitted = status.condition(ConditionType.ADMITTED)
            queued_since = admitted.last_transition_time.timestamp() if admitted else time.time()
        if old_phase != new_phase:
            log.info("%s/%s: %s -> %s: %s", *key, old_phase, new_phase, status.message or "")
        evaluation = status.evaluation
        verdict = str(evaluation.result) if evaluation is not None and evaluation.result is not None else None
        self.metrics.observe_phase(key, old_phase, new_phase, queued_since, verdict)
        if new_phase == Phase.FAILED and old_phase != Phase.FAILED:
            self.metrics.failures.labels(reason=status.error.reason if status.error else "Unknown").inc()
        if new_phase == Phase.SUCCEEDED and old_phase != Phase.SUCCEEDED and verdict == GateOutcome.FAILED:
            self.metrics.evaluation_gate_failures.labels(metric=evaluation.metric if evaluation else "").inc()
        retry = status.last_failure
        retried = decision.create_attempt is not None and decision.create_attempt > 1
        if retried and retry is not None and retry != before.last_failure:
            self.metrics.retries.labels(reason=retry.reason).inc()
