"""The operator's few Kubernetes API calls, on the official client, off the event loop.

The `kubernetes` client is synchronous, so every call runs in a bounded thread pool. Every
call is idempotent where it can be: creating an object that exists (409) and deleting one
that is gone (404) are successes, because reconciles repeat.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from kubetune_api.spec import API_GROUP, API_VERSION, PLURAL
from kubetune_operator.manifests import LABEL_JOB

log = logging.getLogger(__name__)
JSON = dict[str, Any]
T = TypeVar("T")
MERGE_PATCH = "application/merge-patch+json"
CONFLICT, NOT_FOUND = 409, 404


def load_config() -> client.Configuration:
    """In-cluster service account first, then $KUBECONFIG / ~/.kube/config."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.Configuration.get_default_copy()


class Kube:
    def __init__(self, configuration: client.Configuration, workers: int) -> None:
        configuration.connection_pool_maxsize = workers
        self.api_client = client.ApiClient(configuration)
        self.core = client.CoreV1Api(self.api_client)
        self.batch = client.BatchV1Api(self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kube")

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, lambda: fn(*args, **kwargs))

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.api_client.close()

    # -- children ------------------------------------------------------------------------------

    async def create(self, obj: JSON) -> bool:
        """Create a child; False when it already exists (a repeated reconcile)."""
        namespace = obj["metadata"]["namespace"]
        creators: dict[str, Callable[..., Any]] = {
            "ConfigMap": self.core.create_namespaced_config_map,
            "Service": self.core.create_namespaced_service,
            "Job": self.batch.create_namespaced_job,
        }
        try:
            await self._call(creators[obj["kind"]], namespace, obj)
        except ApiException as exc:
            if exc.status == CONFLICT:
                return False
            raise
        return True

    async def set_job_suspended(self, namespace: str, name: str, suspended: bool) -> None:
        body = {"spec": {"suspend": suspended}}
        await self._ignore_missing(self.batch.patch_namespaced_job, name, namespace, body, _content_type=MERGE_PATCH)

    async def delete_job(self, namespace: str, name: str) -> None:
        """Delete a Job and, in the background, its pods (which get SIGTERM and checkpoint)."""
        options = client.V1DeleteOptions(propagation_policy="Background")
        await self._ignore_missing(self.batch.delete_namespaced_job, name, namespace, body=options)

    async def delete_children(self, namespace: str, owner: str) -> int:
        """Delete every Job, Service and ConfigMap labelled as the FineTuneJob's child.

        Owner references let the garbage collector do this too; doing it here makes
        cancellation immediate and does not depend on foreground deletion.
        """
        selector = f"{LABEL_JOB}={owner}"
        jobs = await self._call(self.batch.list_namespaced_job, namespace, label_selector=selector)
        services = await self._call(self.core.list_namespaced_service, namespace, label_selector=selector)
        maps = await self._call(self.core.list_namespaced_config_map, namespace, label_selector=selector)
        for job in jobs.items:
            await self.delete_job(namespace, job.metadata.name)
        for service in services.items:
            await self._ignore_missing(self.core.delete_namespaced_service, service.metadata.name, namespace)
        for config_map in maps.items:
            await self._ignore_missing(self.core.delete_namespaced_config_map, config_map.metadata.name, namespace)
        return len(jobs.items) + len(services.items) + len(maps.items)

    # -- the FineTuneJob itself ------------------------------------------------------------------

    async def patch_status(self, namespace: str, name: str, patch: JSON) -> None:
        await self._call(
            self.custom.patch_namespaced_custom_object_status,
            API_GROUP,
            API_VERSION,
            namespace,
            PLURAL,
            name,
            {"status": patch},
        )

    async def delete_finetunejob(self, namespace: str, name: str) -> None:
        await self._ignore_missing(
            self.custom.delete_namespaced_custom_object, API_GROUP, API_VERSION, namespace, PLURAL, name
        )

    async def _ignore_missing(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        try:
            await self._call(fn, *args, **kwargs)
        except ApiException as exc:
            if exc.status != NOT_FOUND:
                raise
