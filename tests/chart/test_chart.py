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
    assert {"default", "namespaced", "monitoring", "no-crds"} <= set(SCENARIOS)


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
    (container,) = r.one("Deployment")["spec"]["template"]["spec"]["containers"]
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
