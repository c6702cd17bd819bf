"""The server's Kubernetes calls: FineTuneJobs (get, list, create, patch) and Events (list), in
one namespace at a time, exactly the verbs its RBAC grants (docs/install.md). The official
synchronous client, off the event loop in the server's thread pool, as the operator does it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from kubetune_api.spec import API_GROUP, API_VERSION, PLURAL
from kubetune_gateway.errors import SERVER_ERROR, ApiError
from kubetune_gateway.mapping import LABEL_API

log = logging.getLogger(__name__)
JSON = dict[str, Any]
T = TypeVar("T")
MERGE_PATCH = "application/merge-patch+json"
NOT_FOUND, FORBIDDEN = 404, 403


def load_config() -> client.Configuration:
    """In-cluster service account first, then $KUBECONFIG / ~/.kube/config."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.Configuration.get_default_copy()


class Kube:
    def __init__(self, configuration: client.Configuration, pool: Executor) -> None:
        self.api_client = client.ApiClient(configuration)
        self.core = client.CoreV1Api(self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)
        self.pool = pool

    async def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        def run() -> T:
            try:
                return fn(*args, **kwargs)
            except ApiException as exc:
                if exc.status == FORBIDDEN:  # RBAC: a namespace the chart did not grant
                    raise ApiError(
                        500,
                        f"The server may not {what} (Kubernetes said 403: check the chart's tenant namespaces).",
                        type_=SERVER_ERROR,
                    ) from exc
                raise

        return await asyncio.get_running_loop().run_in_executor(self.pool, run)

    def close(self) -> None:
        self.api_client.close()

    async def create(self, manifest: JSON) -> JSON:
        namespace = manifest["metadata"]["namespace"]
        created = await self._call(
            f"create finetunejobs in {namespace}",
            self.custom.create_namespaced_custom_object,
            API_GROUP,
            API_VERSION,
            namespace,
            PLURAL,
            manifest,
        )
        return dict(created)

    async def get(self, namespace: str, name: str) -> JSON | None:
        """The FineTuneJob, if this server made it (others in the namespace are not the API's to show)."""
        try:
            found = await self._call(
                f"get finetunejobs in {namespace}",
                self.custom.get_namespaced_custom_object,
                API_GROUP,
                API_VERSION,
                namespace,
                PLURAL,
                name,
            )
        except ApiException as exc:
            if exc.status == NOT_FOUND:
                return None
            raise
        obj = dict(found)
        return obj if LABEL_API in (obj.get("metadata", {}).get("labels") or {}) else None

    async def list_all(self, namespace: str) -> list[JSON]:
        listed = await self._call(
            f"list finetunejobs in {namespace}",
            self.custom.list_namespaced_custom_object,
            API_GROUP,
            API_VERSION,
            namespace,
            PLURAL,
            label_selector=LABEL_API,
        )
        return [dict(item) for item in listed.get("items", [])]

    async def cancel(self, namespace: str, name: str) -> JSON:
        """spec.cancel: true, a JSON merge patch; the operator stops the trainer and ends in Cancelled."""
        patched = await self._call(
            f"patch finetunejobs in {namespace}",
            self.custom.patch_namespaced_custom_object,
            API_GROUP,
            API_VERSION,
            namespace,
            PLURAL,
            name,
            {"spec": {"cancel": True}},
            _content_type=MERGE_PATCH,
        )
        return dict(patched)

    async def events(self, namespace: str, name: str) -> list[JSON]:
        """Events whose involvedObject is `name`, in their wire (camelCase) form."""
        listed = await self._call(
            f"list events in {namespace}",
            self.core.list_namespaced_event,
            namespace,
            field_selector=f"involvedObject.name={name}",
        )
        wire = self.api_client.sanitize_for_serialization(listed)
        return [dict(item) for item in wire.get("items", [])]
