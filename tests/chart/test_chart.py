"""The Helm chart (charts/kubetune), checked with real Helm v4 (helm-sdkpy) and the Kubernetes OpenAPI schemas."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_support import (
    CHART,
    GENERATED_CRD,
    RELEASE,
    RELEASE_NAMESPACE,
    SCENARIOS,
    Rendered,
    deep_merge,
    install_scenario,
    run_helm_tool,
)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Rendered]]:
    """Every ci/*-values.yaml scenario, installed once per module."""
    yield {s: install_scenario(s, tmp_path_factory.mktemp(f"helm-{s}")) for s in SCENARIOS}


@pytest.fixture
def chart_copy(tmp_path: Path) -> Path:
    """A scratch copy of the chart (lint with other values: helm-sdkpy's lint reads the chart's values.yaml only)."""
    dest = tmp_path / "kubetune"
    shutil.copytree(CHART, dest)
    return dest


kubernetes_validate = pytest.importorskip("kubernetes_validate")

# Schemas of this Kubernetes minor version (bundled with kubernetes-validate) check every built-in object.
K8S_VERSION = "1.33"
CUSTOM_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}  # CRD-defined: checked structurally below
COMMON_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/component",
    "helm.sh/chart",
)
OPERATOR = f"{RELEASE}-operator"

EXPECTED_RULES = {
    ("kubetune.io", "finetunejobs"): ["get", "list", "watch", "patch", "delete"],
    ("kubetune.io", "finetunejobs/status"): ["get", "patch"],
    ("batch", "jobs"): ["get", "list", "watch", "create", "patch", "delete"],
    ("", "pods"): ["get", "list", "watch"],
    ("", "configmaps"): ["list", "create", "delete"],
    ("", "services"): ["list", "create", "delete"],
    ("", "events"): ["create"],
}
CLUSTER_ONLY_RULES = {
    ("", "namespaces"): ["list", "watch"],
    ("apiextensions.k8s.io", "customresourcedefinitions"): ["list", "watch"],
}
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def test_scenarios_exist() -> None:
    assert {"default", "namespaced", "monitoring", "no-crds", "api"} <= set(SCENARIOS)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_lint(scenario: str, chart_copy: Any) -> None:
    """`helm lint` (values.schema.json included) with the chart's values merged with ci/<scenario>-values.yaml."""
    base = yaml.safe_load((CHART / "values.yaml").read_text())
    override = yaml.safe_load((CHART / "ci" / f"{scenario}-values.yaml").read_text()) or {}
    (chart_copy / "values.yaml").write_text(json.dumps(deep_merge(base, override)))
    result = run_helm_tool("lint", str(chart_copy))
    assert result["TotalChartsLinted"] == 1
    # Severities (helm's support.Severity): 1 info, 2 warning, 3 error. Only "icon is recommended" (info) is accepted.
    assert not result["Errors"], result
    assert all(m["Severity"] < 2 for m in result["Messages"]), result["Messages"]


def test_lint_rejects_values_outside_the_schema(chart_copy: Any) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    values["rbac"]["scope"] = "Everywhere"
    values["unknownTopLevel"] = 1
    (chart_copy / "values.yaml").write_text(json.dumps(values))
    result = run_helm_tool("lint", str(chart_copy))
    assert result["Errors"]
    assert {"Severity": 3, "Path": "values.yaml"}.items() <= next(
        m for m in result["Messages"] if m["Path"] == "values.yaml"
    ).items()


def test_kinds_per_scenario(rendered: dict[str, Rendered]) -> None:
    base = {"ServiceAccount", "Service", "Deployment"}
    assert rendered["default"].kinds == base | {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
    namespaced = rendered["namespaced"].kinds
    assert namespaced == base | {"Role", "RoleBinding", "CustomResourceDefinition", "PodMonitor"}
    assert rendered["monitoring"].kinds == base | {
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "ConfigMap",
        *MONITORING_KINDS,
    }
    assert rendered["no-crds"].kinds == base | {"ClusterRole", "ClusterRoleBinding"}
    assert rendered["api"].kinds == base | {
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "ConfigMap",
        "Role",
        "RoleBinding",
    }


def test_installed_into_the_emulator(rendered: dict[str, Rendered]) -> None:
    """The install really created the objects on the (emulated) API server."""
    default = rendered["default"]
    assert [d["metadata"]["name"] for d in default.server_objects["deployments"]] == [OPERATOR]
    crd = next(c for c in default.server_objects["crds"] if c["metadata"]["name"] == "finetunejobs.kubetune.io")
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == RELEASE
    assert len(rendered["monitoring"].server_objects["servicemonitors"]) == 1


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_builtin_objects_match_the_kubernetes_schemas(rendered: dict[str, Rendered], scenario: str) -> None:
    r = rendered[scenario]
    for obj in [*r.objects, *r.hooks]:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_labels(rendered: dict[str, Rendered], scenario: str) -> None:
    for obj in [*rendered[scenario].objects, *rendered[scenario].hooks]:
        labels = obj["metadata"].get("labels", {})
        missing = [k for k in COMMON_LABELS if k not in labels]
        assert not missing, f"{obj['kind']}/{obj['metadata']['name']} lacks {missing}"
        assert labels["app.kubernetes.io/part-of"] == "kubetune"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/version"] == yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]


def _container(r: Rendered) -> dict[str, Any]:
    (container,) = r.one("Deployment")["spec"]["template"]["spec"]["containers"]  # the operator's
    return container


def _env(r: Rendered) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in _container(r)["env"]}


def _assert_restricted(pod: dict[str, Any]) -> None:
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert psc["runAsUser"] == 65532
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["containers"]:
        sc = container["securityContext"]
        assert sc["runAsNonRoot"] is True
        assert sc["runAsUser"] == 65532
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert "privileged" not in sc or sc["privileged"] is False


def test_deployment(rendered: dict[str, Rendered]) -> None:
    r = rendered["default"]
    deployment = r.one("Deployment")
    assert deployment["metadata"]["name"] == OPERATOR
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    _assert_restricted(pod)
    assert pod["automountServiceAccountToken"] is True
    assert pod["serviceAccountName"] == r.one("ServiceAccount")["metadata"]["name"]
    assert r.one("ServiceAccount")["automountServiceAccountToken"] is False
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}]
    container = _container(r)
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "healthz": 8081}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert container["image"] == "ghcr.io/kubetune/operator:0.1.0"
    assert container["args"] == ["kubetune-operator", "--all-namespaces"]
    env = _env(r)
    assert "KUBETUNE_NAMESPACE" not in env
    assert env["KUBETUNE_TRAINER_IMAGE"] == "ghcr.io/kubetune/trainer:0.1.0"
    assert env["KUBETUNE_POLL_INTERVAL_SECONDS"] == "15"
    assert env["KUBETUNE_HEALTH_PORT"] == "8080"
    assert all(isinstance(v, str) for v in env.values())


def test_operator_settings_accept_the_env() -> None:
    """Every KUBETUNE_* variable the chart sets is a field of the operator's settings."""
    from kubetune_operator.settings import ENV_PREFIX, OperatorSettings

    template = (CHART / "templates" / "deployment.yaml").read_text()
    names = set(re.findall(r"name: (KUBETUNE_[A-Z_]+)", template))
    assert names
    fields = {ENV_PREFIX + f.upper() for f in OperatorSettings.model_fields}
    assert names <= fields, names - fields


def test_operator_settings_parse_the_rendered_env(
    rendered: dict[str, Rendered], monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubetune_operator.settings import OperatorSettings

    for name, value in _env(rendered["namespaced"]).items():
        monkeypatch.setenv(name, value)
    settings = OperatorSettings()
    assert settings.namespace == RELEASE_NAMESPACE
    assert settings.health_port == 8080
    assert settings.trainer_image == "ghcr.io/kubetune/trainer:0.1.0"
    assert (settings.gpu_price("H100-80GB"), settings.gpu_price("A100-80GB"), settings.currency) == (3.5, 2.1, "EUR")
    assert settings.gpu_price("L4-24GB") is None


def test_namespaced_mode(rendered: dict[str, Rendered]) -> None:
    r = rendered["namespaced"]
    assert _container(r)["args"] == ["kubetune-operator", "--namespace", RELEASE_NAMESPACE]
    assert _env(r)["KUBETUNE_NAMESPACE"] == RELEASE_NAMESPACE
    role, binding = r.one("Role"), r.one("RoleBinding")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == RELEASE_NAMESPACE
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": OPERATOR}
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": OPERATOR, "namespace": RELEASE_NAMESPACE},
    ]
    assert r.one("PodMonitor")["spec"]["namespaceSelector"] == {"matchNames": [RELEASE_NAMESPACE]}


def _rules(role: dict[str, Any]) -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule  # no resourceNames/nonResourceURLs
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert "*" not in (group, resource) and "*" not in rule["verbs"], rule
                assert (group, resource) not in out, f"{group}/{resource} granted twice"
                out[(group, resource)] = rule["verbs"]
    return out


@pytest.mark.parametrize(("scenario", "kind"), [("default", "ClusterRole"), ("namespaced", "Role")])
def test_rbac_is_exactly_the_documented_table(rendered: dict[str, Rendered], scenario: str, kind: str) -> None:
    expected = dict(EXPECTED_RULES)
    if kind == "ClusterRole":
        expected.update(CLUSTER_ONLY_RULES)
    rules = {key: sorted(verbs) for key, verbs in _rules(rendered[scenario].one(kind)).items()}
    assert rules == {key: sorted(verbs) for key, verbs in expected.items()}
    assert not {"Role", "RoleBinding"} & rendered["default"].kinds
    assert not {"ClusterRole", "ClusterRoleBinding"} & rendered["namespaced"].kinds


def test_rbac_matches_docs_operator_md() -> None:
    """The expected verbs above are the table in docs/operator.md ("Permissions it needs")."""
    doc = (CHART.parents[1] / "docs" / "operator.md").read_text()
    table = doc.split("### Permissions it needs", 1)[1].split("\n\n", 2)[1]
    rows = {}
    for line in table.splitlines()[2:]:
        resource, verbs = (cell.strip() for cell in line.strip("|").split("|"))
        rows[resource] = [v.strip() for v in verbs.split("(")[0].split(",")]
    assert rows["`finetunejobs.kubetune.io`"] == EXPECTED_RULES[("kubetune.io", "finetunejobs")]
    assert rows["`finetunejobs.kubetune.io/status`"] == EXPECTED_RULES[("kubetune.io", "finetunejobs/status")]
    assert rows["`batch/jobs`"] == EXPECTED_RULES[("batch", "jobs")]
    assert rows["`pods`"] == EXPECTED_RULES[("", "pods")]
    assert rows["`configmaps`, `services`"] == EXPECTED_RULES[("", "configmaps")]
    assert rows["`events` (core)"] == EXPECTED_RULES[("", "events")]
    assert rows["`namespaces`, `customresourcedefinitions`"] == CLUSTER_ONLY_RULES[("", "namespaces")]


def test_metrics_service(rendered: dict[str, Rendered]) -> None:
    r = rendered["default"]
    service = r.one("Service")
    assert service["metadata"]["name"] == OPERATOR  # the alert rules match job=~".*kubetune-operator.*"
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}]
    pod_labels = r.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert r.one("Deployment")["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]


def test_monitoring_objects_only_when_enabled(rendered: dict[str, Rendered]) -> None:
    for scenario in ("default", "no-crds"):
        assert not MONITORING_KINDS & rendered[scenario].kinds
        assert not rendered[scenario].of_kind("ConfigMap")
    r = rendered["monitoring"]
    for kind in MONITORING_KINDS:
        assert r.one(kind)["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert r.one(kind)["apiVersion"] == "monitoring.coreos.com/v1"


def test_service_monitor(rendered: dict[str, Rendered]) -> None:
    r = rendered["monitoring"]
    spec = r.one("ServiceMonitor")["spec"]
    assert spec["selector"]["matchLabels"].items() <= r.one("Service")["metadata"]["labels"].items()
    assert spec["namespaceSelector"] == {"matchNames": [RELEASE_NAMESPACE]}
    (endpoint,) = spec["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "30s"


def test_pod_monitor_selects_trainer_pods(rendered: dict[str, Rendered]) -> None:
    from kubetune_operator import manifests

    spec = rendered["monitoring"].one("PodMonitor")["spec"]
    assert spec["selector"]["matchLabels"] == {
        "app.kubernetes.io/part-of": "kubetune",
        "app.kubernetes.io/component": "trainer",
    }
    assert spec["namespaceSelector"] == {"any": True}
    (endpoint,) = spec["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics"
    assert manifests.LABEL_PART_OF in spec["selector"]["matchLabels"]
    assert manifests.LABEL_COMPONENT in spec["selector"]["matchLabels"]


def test_prometheus_rule_is_the_rule_file(rendered: dict[str, Rendered]) -> None:
    rule_file = yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
    assert rendered["monitoring"].one("PrometheusRule")["spec"] == {"groups": rule_file["groups"]}


def test_grafana_dashboards(rendered: dict[str, Rendered]) -> None:
    configmap = rendered["monitoring"].one("ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "kubetune"}
    files = sorted((CHART / "files" / "dashboards").glob("*.json"))
    assert "kubetune-overview.json" in {f.name for f in files}
    assert sorted(configmap["data"]) == [f.name for f in files]
    for f in files:
        assert json.loads(configmap["data"][f.name]) == json.loads(f.read_text())


def test_crd_is_the_generated_one(rendered: dict[str, Rendered]) -> None:
    chart_copy = CHART / "files" / "crds" / GENERATED_CRD.name
    assert chart_copy.read_text() == GENERATED_CRD.read_text(), "run `make crds`"
    generated = yaml.safe_load(GENERATED_CRD.read_text())
    crd = rendered["default"].one("CustomResourceDefinition")
    assert crd["spec"] == generated["spec"]
    assert crd["metadata"]["name"] == generated["metadata"]["name"]
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert crd["metadata"]["labels"].items() >= generated["metadata"]["labels"].items()
    assert not rendered["no-crds"].of_kind("CustomResourceDefinition")
    assert not list((CHART / "crds").glob("*")) if (CHART / "crds").exists() else True  # never crds/: see README


def test_helm_test_hook(rendered: dict[str, Rendered]) -> None:
    (pod,) = rendered["default"].hooks
    assert pod["kind"] == "Pod"
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    spec = pod["spec"]
    _assert_restricted(spec)
    assert spec["automountServiceAccountToken"] is False
    assert spec["restartPolicy"] == "Never"
    (container,) = spec["containers"]
    assert container["image"] == "busybox:1.37"
    assert container["command"][-1] == f"http://{OPERATOR}.{RELEASE_NAMESPACE}.svc:8080/readyz"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_notes(rendered: dict[str, Rendered], scenario: str) -> None:
    notes = rendered[scenario].notes
    assert "kubectl get ftj" in notes and " -w" in notes
    assert f"rollout status deployment/{OPERATOR}" in notes
    assert ("kubectl apply --server-side -f" in notes) == (scenario == "no-crds")
    # The FineTuneJob example in NOTES is a valid spec.
    from kubetune_api.spec import FineTuneJobSpec

    example = textwrap.dedent(notes.split("<<YAML", 1)[1].split("\n", 1)[1].split("YAML\n", 1)[0])
    doc = yaml.safe_load(example)
    assert doc["kind"] == "FineTuneJob"
    FineTuneJobSpec.model_validate(doc["spec"])


def test_readme_values_table_is_in_sync() -> None:
    proc = subprocess.run(
        [sys.executable, str(CHART / "generate_readme.py"), "--check"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr


def test_every_value_is_documented_and_typed() -> None:
    sys.path.insert(0, str(CHART))
    try:
        import generate_readme
    finally:
        sys.path.remove(str(CHART))
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    documented = generate_readme.documented_values((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False

    def walk(node: Any, path: tuple[str, ...], sub: dict[str, Any]) -> None:
        dotted = ".".join(path)
        assert "type" in sub, f"{dotted} has no type in values.schema.json"
        if dotted in documented:
            return
        assert isinstance(node, dict) and node, f"{dotted} has no '# --' comment in values.yaml"
        assert sub.get("additionalProperties") is False, f"{dotted}: additionalProperties must be false"
        for key, child in node.items():
            assert re.fullmatch(r"[a-z][A-Za-z0-9]*", key), f"{dotted}.{key} is not camelCase"
            assert key in sub["properties"], f"{dotted}.{key} is not in values.schema.json"
            walk(child, (*path, key), sub["properties"][key])

    for key, child in values.items():
        assert key in schema["properties"], key
        walk(child, (key,), schema["properties"][key])


def test_default_cache_claim_reaches_the_operator_only_when_set(
    rendered: dict[str, Rendered], monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubetune_operator.settings import OperatorSettings

    assert not {"KUBETUNE_CACHE_CLAIM_NAME", "KUBETUNE_CACHE_CLAIM_SIZE_LIMIT"} & set(_env(rendered["default"]))
    env = _env(rendered["namespaced"])
    assert env["KUBETUNE_CACHE_CLAIM_NAME"] == "model-cache" and env["KUBETUNE_CACHE_CLAIM_SIZE_LIMIT"] == "500Gi"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cache = OperatorSettings().default_cache
    assert cache is not None and cache.claim_name == "model-cache" and cache.size_limit_bytes == 500 * 1024**3


def test_lint_rejects_a_cache_size_that_is_not_a_quantity(chart_copy: Any) -> None:
    # helm-sdkpy reports no error text, so the same values with a good quantity must lint clean.
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for size, refused in (("500Gi", False), ("500GB", True)):
        values["operator"]["cacheClaim"] = {"name": "model-cache", "sizeLimit": size}
        (chart_copy / "values.yaml").write_text(json.dumps(values))
        result = run_helm_tool("lint", str(chart_copy))
        assert bool(result["Errors"]) is refused, (size, result)


# -- the OpenAI-compatible API server (api.enabled) -----------------------------------------------

API = f"{RELEASE}-api"
API_ENV_FILES = {
    "KUBETUNE_API_TOKENS_FILE": "/etc/kubetune-api/tokens/tokens.json",
    "KUBETUNE_API_CONFIG_FILE": "/etc/kubetune-api/config/config.yaml",
}


def _api_objects(r: Rendered) -> list[dict[str, Any]]:
    return [o for o in r.objects if o["metadata"]["labels"].get("app.kubernetes.io/component") == "api"]


def _api(r: Rendered, kind: str) -> dict[str, Any]:
    (found,) = [o for o in _api_objects(r) if o["kind"] == kind]
    return found


def _api_values(**api: Any) -> dict[str, Any]:
    """Values with the API on: a tokens Secret and one tenant, overridden by `api`."""
    tenant = {"filesUri": "s3://team-a/files/", "outputUri": "s3://team-a/adapters/"}
    return {"api": {"enabled": True, "tokensSecret": "tokens", "tenants": {"team-a": tenant}} | api}


def _refused(values: dict[str, Any], tmp_path: Path) -> str:
    """The error of a `helm install` that must fail."""
    with pytest.raises(AssertionError) as failed:
        install_scenario("refused", tmp_path, values)
    return str(failed.value)


@pytest.mark.parametrize("scenario", sorted(set(SCENARIOS) - {"api"}))
def test_api_is_off_by_default(rendered: dict[str, Rendered], scenario: str) -> None:
    assert yaml.safe_load((CHART / "values.yaml").read_text())["api"]["enabled"] is False
    assert _api_objects(rendered[scenario]) == []
    assert "OpenAI-compatible API" not in rendered[scenario].notes


def test_api_objects(rendered: dict[str, Rendered]) -> None:
    r = rendered["api"]
    values = r.values["api"]
    kinds = sorted((o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in _api_objects(r))
    assert kinds == sorted(
        [
            ("ConfigMap", RELEASE_NAMESPACE, f"{API}-config"),
            ("Deployment", RELEASE_NAMESPACE, API),
            ("Service", RELEASE_NAMESPACE, API),
            ("ServiceAccount", RELEASE_NAMESPACE, API),
            *(("Role", tenant, API) for tenant in values["tenants"]),
            *(("RoleBinding", tenant, API) for tenant in values["tenants"]),
        ]
    )
    deployment = _api(r, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == API and pod["automountServiceAccountToken"] is True
    assert _api(r, "ServiceAccount")["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    operator_image = next(d for d in r.of_kind("Deployment") if d["metadata"]["name"] == OPERATOR)
    assert container["image"] == operator_image["spec"]["template"]["spec"]["containers"][0]["image"]
    assert container["args"] == ["kubetune-api"]
    env = {e["name"]: e for e in container["env"]}
    assert env["KUBETUNE_API_PORT"]["value"] == "8000" and env["KUBETUNE_API_HOST"]["value"] == "0.0.0.0"
    for name, path in API_ENV_FILES.items():
        assert env[name]["value"] == path
    # The server's own S3 credentials, from a Secret reference: never a value in the manifest.
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key] == {"name": key, "valueFrom": {"secretKeyRef": {"name": "kubetune-api-s3", "key": key}}}
    assert env["AWS_SESSION_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    # Tokens and config are files: the server never reads Secrets or ConfigMaps through the API.
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for name, path in API_ENV_FILES.items():
        folder, file = path.rsplit("/", 1)
        mount = mounts[folder]
        assert mount.get("readOnly") is True and "subPath" not in mount, name  # a rotated Secret reaches the pod
        source = volumes[mount["name"]].get("secret") or volumes[mount["name"]]["configMap"]
        assert [item["path"] for item in source["items"]] == [file]
    assert volumes[mounts["/etc/kubetune-api/tokens"]["name"]]["secret"]["secretName"] == "kubetune-api-tokens"
    assert volumes[mounts["/etc/kubetune-api/tokens"]["name"]]["secret"]["items"][0]["key"] == "tokens.json"
    assert volumes[mounts["/etc/kubetune-api/config"]["name"]]["configMap"]["name"] == f"{API}-config"
    assert volumes[mounts["/tmp"]["name"]] == {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}

    service = _api(r, "Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    operator_pods = operator_image["spec"]["template"]["metadata"]["labels"]
    assert not service["spec"]["selector"].items() <= operator_pods.items()  # never the operator's pods

    config = yaml.safe_load(_api(r, "ConfigMap")["data"]["config.yaml"])
    assert config == {"catalog": values["catalog"], "tenants": values["tenants"]}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/config"])  # a config change rolls the pods
    assert "service/kubetune-api:8000" in r.notes and "team-a, team-b" in r.notes


def test_api_helm_test_hook_checks_its_healthz(rendered: dict[str, Rendered]) -> None:
    hooks = {pod["metadata"]["name"]: pod for pod in rendered["api"].hooks}
    pod = hooks[f"{RELEASE}-test-api-healthz"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    _assert_restricted(pod["spec"])
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert pod["spec"]["containers"][0]["command"][-1] == f"http://{API}.{RELEASE_NAMESPACE}.svc:8000/healthz"


def test_api_pod_meets_the_restricted_pod_security_standard(rendered: dict[str, Rendered]) -> None:
    pod = _api(rendered["api"], "Deployment")["spec"]["template"]["spec"]
    _assert_restricted(pod)
    assert "hostNetwork" not in pod and "hostPID" not in pod and "hostIPC" not in pod
    assert all("hostPath" not in v for v in pod["volumes"])
    (container,) = pod["containers"]
    assert all("hostPort" not in p for p in container["ports"])


def _docs_api_rbac_table() -> list[dict[str, str]]:
    """The rows of the table under "Permissions of the API server" in docs/install.md."""
    doc = (CHART.parents[1] / "docs" / "install.md").read_text()
    section = doc.split("### Permissions of the API server", 1)[1]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip().lower() for cell in lines[0].strip("|").split("|")]
    assert header == ["resource", "verbs", "scope", "why"], header
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines[2:]]
    assert rows
    return rows


def _docs_api_rules() -> dict[tuple[str, str], list[str]]:
    """{(apiGroup, resource): verbs} of the docs table: `finetunejobs.kubetune.io` or `events` (core)."""
    rules: dict[tuple[str, str], list[str]] = {}
    for row in _docs_api_rbac_table():
        assert row["scope"] == "each tenant namespace" and row["why"], row
        named = re.fullmatch(r"`([a-z/]+)(?:\.([a-z0-9.-]+))?`(?: \(core\))?", row["resource"])
        assert named, row["resource"]
        resource, group = named[1], named[2] or ""
        rules[(group, resource)] = [verb.strip() for verb in row["verbs"].split(",")]
    return rules


def test_api_rbac_is_exactly_the_table_in_docs_install_md(rendered: dict[str, Rendered]) -> None:
    """Every rule the API's ServiceAccount holds, found through every binding that names it, is in the docs
    table, and every row of the table is granted: in each tenant namespace, and nowhere else."""
    r = rendered["api"]
    documented = {key: sorted(verbs) for key, verbs in _docs_api_rules().items()}
    assert ("kubetune.io", "finetunejobs") in documented  # the table was found and parsed
    subject = {"kind": "ServiceAccount", "name": API, "namespace": RELEASE_NAMESPACE}
    bindings = [o for o in r.objects if o["kind"] in {"RoleBinding", "ClusterRoleBinding"} and subject in o["subjects"]]
    assert all(b["kind"] == "RoleBinding" for b in bindings), "no cluster-scoped binding for the API"
    assert sorted(b["metadata"]["namespace"] for b in bindings) == sorted(r.values["api"]["tenants"])
    for binding in bindings:
        namespace = binding["metadata"]["namespace"]
        assert binding["subjects"] == [subject]
        ref = binding["roleRef"]
        assert ref["kind"] == "Role", "a ClusterRole bound per namespace would still be editable cluster-wide"
        role = next(
            o
            for o in r.of_kind("Role")
            if o["metadata"]["name"] == ref["name"] and o["metadata"]["namespace"] == namespace
        )
        assert {key: sorted(verbs) for key, verbs in _rules(role).items()} == documented, namespace
    # The operator's own grants are untouched by the API (same table as without it).
    operator_rules = {key: sorted(v) for key, v in _rules(r.one("ClusterRole")).items()}
    assert operator_rules == {key: sorted(v) for key, v in {**EXPECTED_RULES, **CLUSTER_ONLY_RULES}.items()}


def test_api_with_a_namespaced_operator_serves_the_release_namespace(tmp_path: Path) -> None:
    """The one tenant a namespaced operator can serve; no S3 Secret means no AWS_* variables (IRSA)."""
    tenant = {"filesUri": "s3://ml/files/", "outputUri": "s3://ml/adapters/"}
    values = {"rbac": {"scope": "Namespaced"}, **_api_values(tenants={RELEASE_NAMESPACE: tenant})}
    r = install_scenario("api-namespaced", tmp_path, values)
    assert {(o["kind"], o["metadata"]["namespace"]) for o in _api_objects(r) if "Role" in o["kind"]} == {
        ("Role", RELEASE_NAMESPACE),
        ("RoleBinding", RELEASE_NAMESPACE),
    }
    (container,) = _api(r, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert not [e for e in container["env"] if e["name"].startswith("AWS_")]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (_api_values(tokensSecret=""), "api.tokensSecret is required when api.enabled is true"),
        (_api_values(tenants={}), "api.tenants is required when api.enabled is true"),
        (
            {"rbac": {"scope": "Namespaced"}, **_api_values()},
            f"api.tenants.team-a: rbac.scope Namespaced runs the operator for namespace {RELEASE_NAMESPACE} only",
        ),
    ],
    ids=["no-tokens-secret", "no-tenants", "tenant-outside-a-namespaced-operator"],
)
def test_api_values_that_cannot_work_are_refused_by_name(values: dict[str, Any], message: str, tmp_path: Path) -> None:
    assert message in _refused(values, tmp_path)


def test_lint_rejects_an_api_tenant_without_its_uris(chart_copy: Any) -> None:
    # helm-sdkpy's lint reports no error text, so the same values with the URIs must lint clean.
    values = deep_merge(yaml.safe_load((CHART / "values.yaml").read_text()), _api_values())
    for tenant, refused in (
        ({"filesUri": "s3://a/files/", "outputUri": "s3://a/out/"}, False),
        ({"filesUri": "s3://a/files/"}, True),
        ({"filesUri": "a/files", "outputUri": "s3://a/out/"}, True),
        ({"filesUri": "s3://a/files/", "outputUri": "s3://a/out/", "bucket": "x"}, True),
    ):
        values["api"]["tenants"] = {"team-a": tenant}
        (chart_copy / "values.yaml").write_text(json.dumps(values))
        result = run_helm_tool("lint", str(chart_copy))
        assert bool(result["Errors"]) is refused, (tenant, result)
