"""Support of the chart tests: real Helm (helm-sdkpy in .venv-helm) linting and installing charts/kubetune.

Rendering is a real `helm install` into the test API server (tests/harness/apiserver.py), one server per scenario.
That server has no OpenAPI endpoints, and Helm (the helm-sdkpy build ignores `disable_openapi_validation`) validates
manifests client-side unless the server says it validates fields itself. ``OpenAPIApiServer`` serves a minimal
``/openapi/v3`` that says so (a PATCH with the ``fieldValidation`` parameter for every kind it serves), as a real
apiserver >= 1.27 does; the schema checks then happen here, with kubernetes-validate (test_chart.py).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import pytest
import yaml

from harness.apiserver import ApiServer, RunningApiServer

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubetune"
HELM_PYTHON = ROOT / ".venv-helm" / "bin" / "python"
HELM_TOOL = Path(__file__).with_name("helm_tool.py")
FIXTURES = Path(__file__).with_name("fixtures")
GENERATED_CRD = ROOT / "crds" / "kubetune.io_finetunejobs.yaml"
SCENARIOS = sorted(p.stem.removesuffix("-values") for p in (CHART / "ci").glob("*-values.yaml"))
RELEASE_NAMESPACE = "kubetune-system"
RELEASE = "kubetune"


@attrs.define(kw_only=True)
class OpenAPIApiServer(ApiServer):  # type: ignore[misc]
    """The test API server plus a minimal /openapi/v3 declaring server-side field validation for every kind."""

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        path = raw_request.path.rstrip("/")
        if path == "/openapi/v3":
            return aiohttp.web.json_response(
                {"paths": {gv: {"serverRelativeURL": f"/openapi/v3/{gv}"} for gv in self._gvs()}}
            )
        if path.startswith("/openapi/v3/"):
            gv = path.removeprefix("/openapi/v3/")
            if gv in self._gvs():
                return aiohttp.web.json_response(self._openapi_doc(gv))
            return aiohttp.web.json_response({"kind": "Status", "code": 404}, status=404)
        return await super().__call__(raw_request)

    def _kinds(self) -> dict[str, list[tuple[str, str, str, bool]]]:
        """{"apis/apps/v1": [(group, version, kind, namespaced), ...], "api/v1": [...]}."""
        out: dict[str, list[tuple[str, str, str, bool]]] = {}
        for res in self._get_resources():
            group, version, plural = res.group or "", res.version or "", res.plural
            info = self.resources[res]
            if not plural or "/" in plural or not info.kind:
                continue
            gv = f"apis/{group}/{version}" if group else f"api/{version}"
            out.setdefault(gv, []).append((group, version, info.kind, bool(info.namespaced)))
        return out

    def _gvs(self) -> list[str]:
        return sorted(self._kinds())

    def _openapi_doc(self, gv: str) -> dict[str, Any]:
        paths: dict[str, Any] = {}
        for group, version, kind, _namespaced in self._kinds()[gv]:
            paths[f"/{gv}/{kind.lower()}/{{name}}"] = {
                "patch": {
                    "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": kind},
                    "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "OK"}},
                }
            }
        return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.26.4"}, "paths": paths}


def helm_available() -> bool:
    return HELM_PYTHON.exists()


def run_helm_tool(*args: str) -> dict[str, Any]:
    if not helm_available():
        pytest.skip(f"{HELM_PYTHON} is missing: run `make .venv-helm/.installed` (make test does)")
    env = {**os.environ, "HELM_DRIVER": "memory"}
    proc = subprocess.run(
        [str(HELM_PYTHON), str(HELM_TOOL), *args], capture_output=True, text=True, timeout=120, env=env, check=False
    )
    try:
        result: dict[str, Any] = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"helm_tool {args[0]} failed (rc {proc.returncode}): {proc.stderr[-3000:]}") from None
    if proc.returncode != 0:
        raise AssertionError(f"helm_tool {args[0]}: {result}")
    return result


def deep_merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = deep_merge(base.get(key), value) if key in base else copy.deepcopy(value)
        return merged
    return copy.deepcopy(override)


def scenario_values(scenario: str) -> dict[str, Any]:
    return yaml.safe_load((CHART / "ci" / f"{scenario}-values.yaml").read_text()) or {}


@dataclass
class Rendered:
    """One scenario installed with real Helm: the objects of its manifest, its hooks and its NOTES."""

    scenario: str
    values: dict[str, Any]
    objects: list[dict[str, Any]]
    hooks: list[dict[str, Any]]
    notes: str
    server_objects: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.of_kind(kind)
        assert len(found) == 1, f"{self.scenario}: expected one {kind}, got {len(found)}"
        return found[0]

    @property
    def kinds(self) -> set[str]:
        return {o["kind"] for o in self.objects}


def create_tenant_namespaces(server: RunningApiServer, values: dict[str, Any]) -> None:
    """The API's tenant namespaces exist before the install, as on a cluster (the chart puts Roles in them)."""
    import kubernetes.client

    with server.api_client() as api_client:
        core = kubernetes.client.CoreV1Api(api_client)
        for namespace in (values.get("api") or {}).get("tenants") or {}:
            core.create_namespace({"metadata": {"name": namespace}})


def install_scenario(scenario: str, tmp_path: Path, values: dict[str, Any] | None = None) -> Rendered:
    """Install ci/<scenario>-values.yaml, or `values` when given (then `scenario` only names the result)."""
    values = scenario_values(scenario) if values is None else values
    values_file = tmp_path / "values.json"
    values_file.write_text(json.dumps(values))
    crds = [GENERATED_CRD, *sorted(FIXTURES.glob("monitoring.coreos.com_*.yaml"))]
    server = RunningApiServer(OpenAPIApiServer(), crd_paths=crds).start()
    try:
        create_tenant_namespaces(server, values)
        kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
        release = run_helm_tool(
            "install",
            str(CHART),
            "--kubeconfig",
            str(kubeconfig),
            "--namespace",
            RELEASE_NAMESPACE,
            "--release",
            RELEASE,
            "--values-json",
            str(values_file),
            # The server already has the CRD (a cluster where `kubectl apply -f crds/` ran): the release adopts it.
            "--take-ownership",
        )
        objects = [doc for doc in yaml.safe_load_all(release.get("manifest", "")) if doc]
        hooks = [yaml.safe_load(h["manifest"]) for h in release.get("hooks") or []]
        server_objects = {
            "deployments": server.api.objects_of("apps", "v1", "deployments", RELEASE_NAMESPACE),
            "crds": server.api.objects_of("apiextensions.k8s.io", "v1", "customresourcedefinitions"),
            "servicemonitors": server.api.objects_of("monitoring.coreos.com", "v1", "servicemonitors"),
        }
    finally:
        server.stop()
    return Rendered(
        scenario=scenario,
        values=values,
        objects=objects,
        hooks=hooks,
        notes=(release.get("info") or {}).get("notes", ""),
        server_objects=server_objects,
    )
