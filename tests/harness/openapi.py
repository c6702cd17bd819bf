"""Just enough ``/openapi/v3`` for kubectl to leave validation to the server.

``kubectl create|apply -f`` validate by default (``--validate=strict``). Before sending, kubectl asks the server's
documents whether the PATCH endpoint of the object's kind accepts the ``fieldValidation`` query parameter: if it does,
kubectl sends ``fieldValidation=Strict`` and lets the server refuse unknown fields and bad values (which
``schema_validation`` does for custom resources); if the documents cannot be fetched, kubectl refuses to send anything
("failed to download openapi"). kmock 0.8 serves no OpenAPI at all, so these documents list, per group/version, the
PATCH operation of each resource with its ``x-kubernetes-group-version-kind`` and the ``fieldValidation``
parameter, and, for custom resources, the CRD's ``openAPIV3Schema`` under ``components.schemas`` (named as
kube-apiserver names it), which is what ``kubectl explain finetunejob.status --recursive`` renders. Built-in kinds
have no schema here. ``/openapi/v2`` stays 404.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any, NamedTuple

ROOT = "/openapi/v3"


class ServedResource(NamedTuple):
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    schema: dict[str, Any] | None = None  # a custom resource's openAPIV3Schema, for `kubectl explain`


def group_version_path(group: str, version: str) -> str:
    """``api/v1`` for the core group, ``apis/<group>/<version>`` otherwise (the keys of the v3 root document)."""
    return f"apis/{group}/{version}" if group else f"api/{version}"


def root_document(resources: Iterable[ServedResource]) -> dict[str, Any]:
    """The ``/openapi/v3`` index: one entry per group/version, with a content hash as the real server gives."""
    by_path: dict[str, list[ServedResource]] = {}
    for res in resources:
        by_path.setdefault(group_version_path(res.group, res.version), []).append(res)
    paths = {}
    for path, members in sorted(by_path.items()):
        digest = hashlib.sha256(json.dumps(group_version_document(members), sort_keys=True).encode()).hexdigest()
        paths[path] = {"serverRelativeURL": f"{ROOT}/{path}?hash={digest[:32].upper()}"}
    return {"paths": paths}


def group_version_document(resources: Iterable[ServedResource]) -> dict[str, Any]:
    """One group/version: the object endpoints with a PATCH operation that declares ``fieldValidation``."""
    paths: dict[str, Any] = {}
    for res in sorted(resources):
        prefix = "/" + group_version_path(res.group, res.version)
        scope = "/namespaces/{namespace}" if res.namespaced else ""
        paths[f"{prefix}{scope}/{res.plural}/{{name}}"] = {
            "patch": {
                "operationId": f"patch{res.kind}",
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": {"group": res.group, "version": res.version, "kind": res.kind},
                "parameters": [
                    {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
                    {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
                    {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
                ],
                "responses": {"200": {"description": "OK"}},
            }
        }
    schemas = {
        _schema_name(res): {
            **res.schema,
            "x-kubernetes-group-version-kind": [{"group": res.group, "version": res.version, "kind": res.kind}],
        }
        for res in resources
        if res.schema
    }
    document: dict[str, Any] = {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "unversioned"}}
    document["paths"] = paths
    if schemas:
        document["components"] = {"schemas": schemas}
    return document


def _schema_name(res: ServedResource) -> str:
    """The name kube-apiserver gives a custom resource's schema: reversed group, version, kind."""
    reversed_group = ".".join(reversed(res.group.split(".")))
    return f"{reversed_group}.{res.version}.{res.kind}"
