"""The generated CustomResourceDefinition: no drift from spec.py, and a structural schema.

Kubernetes only accepts structural OpenAPI v3.0 schemas for apiextensions.k8s.io/v1;
these checks mirror the apiserver's rules closely enough to catch a bad generator
change before a cluster does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune_api.crd import build_crd, render_crd

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "kubetune.io_finetunejobs.yaml"

JSON = dict[str, Any]


@pytest.fixture(scope="module")
def crd() -> JSON:
    return build_crd()


@pytest.fixture(scope="module")
def root_schema(crd: JSON) -> JSON:
    [version] = crd["spec"]["versions"]
    schema: JSON = version["schema"]["openAPIV3Schema"]
    return schema


@pytest.fixture(scope="module")
def spec_schema(root_schema: JSON) -> JSON:
    schema: JSON = root_schema["properties"]["spec"]
    return schema


@pytest.fixture(scope="module", params=["spec", "status"])
def typed_schema(request: pytest.FixtureRequest, root_schema: JSON) -> tuple[str, JSON]:
    """spec and status: both generated from pydantic models, both held to the structural rules."""
    name: str = request.param
    return name, root_schema["properties"][name]


def nodes(schema: Any, path: str = "spec") -> Iterator[tuple[str, JSON]]:
    """Every schema node under `schema` (itself included), with a readable path."""
    if not isinstance(schema, dict):
        return
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from nodes(child, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from nodes(schema["additionalProperties"], f"{path}{{}}")
    for i, branch in enumerate(schema.get("anyOf", [])):
        yield from nodes(branch, f"{path}.anyOf[{i}]")


def properties(schema: JSON, path: str = "spec") -> Iterator[tuple[str, JSON]]:
    """Every named property under `schema` (through nested objects and array items)."""
    for name, child in schema.get("properties", {}).items():
        yield f"{path}.{name}", child
        yield from properties(child, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from properties(schema["items"], f"{path}[]")


def test_checked_in_crd_matches_generator() -> None:
    """crds/kubetune.io_finetunejobs.yaml is exactly what spec.py generates."""
    assert CRD_PATH.read_text() == render_crd(), (
        f"{CRD_PATH.relative_to(ROOT)} is out of date with kubetune_api/spec.py: run `make crds`"
    )


def test_rendered_crd_is_the_built_crd() -> None:
    """The YAML text parses back to build_crd() (nothing lost in rendering)."""
    assert yaml.safe_load(render_crd()) == build_crd()


def test_names_and_scope(crd: JSON) -> None:
    """Group, kind, plural, short name ftj and category kubetune, namespaced."""
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == "finetunejobs.kubetune.io"
    spec = crd["spec"]
    assert spec["group"] == "kubetune.io"
    assert spec["scope"] == "Namespaced"
    names = spec["names"]
    assert (names["kind"], names["listKind"], names["plural"], names["singular"]) == (
        "FineTuneJob",
        "FineTuneJobList",
        "finetunejobs",
        "finetunejob",
    )
    assert names["shortNames"] == ["ftj"]
    assert names["categories"] == ["kubetune"]


def test_version_served_with_status_subresource(crd: JSON) -> None:
    """One served, stored version, with the status subresource the operator writes through."""
    [version] = crd["spec"]["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


def test_printer_columns(crd: JSON) -> None:
    """kubectl get shows Phase, Progress, Loss, Eval (the evaluation gate), ETA and Age by default."""
    [version] = crd["spec"]["versions"]
    columns = version["additionalPrinterColumns"]
    default = [c["name"] for c in columns if c.get("priority", 0) == 0]
    assert default == ["Phase", "Progress", "Loss", "Eval", "ETA", "Age"]
    by_name = {c["name"]: c for c in columns}
    assert by_name["Phase"]["jsonPath"] == ".status.phase"
    assert by_name["Age"] == {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
    assert by_name["Loss"]["type"] == "number"
    assert by_name["Eval"]["jsonPath"] == ".status.evaluation.result"
    for column in columns:
        assert column["type"] in {"string", "number", "integer", "date", "boolean"}
        assert column["jsonPath"].startswith(".")


def test_root_schema(root_schema: JSON) -> None:
    """The root is an object requiring spec, with a typed, described status (nothing preserved unknown)."""
    assert root_schema["type"] == "object"
    assert root_schema["required"] == ["spec"]
    assert set(root_schema["properties"]) == {"apiVersion", "kind", "metadata", "spec", "status"}
    assert root_schema["properties"]["metadata"] == {"type": "object"}
    status = root_schema["properties"]["status"]
    assert status["type"] == "object"
    assert status["description"]
    for path, node in nodes(status, "status"):
        assert "x-kubernetes-preserve-unknown-fields" not in node, f"{path} preserves unknown fields"


def test_spec_schema_shape(spec_schema: JSON) -> None:
    """spec is an object with the FineTuneJobSpec fields in camelCase and its required ones."""
    assert spec_schema["type"] == "object"
    assert spec_schema["description"]
    assert set(spec_schema["required"]) == {"baseModel", "dataset", "output"}
    assert {"baseModel", "dataset", "lora", "training", "evaluation", "output", "storage", "resources"} <= set(
        spec_schema["properties"]
    )
    for path, _ in properties(spec_schema):
        assert "_" not in path.rsplit(".", 1)[-1], f"{path} is not camelCase"


def test_every_property_has_type_and_description(typed_schema: tuple[str, JSON]) -> None:
    """Structural: each field has a type (or is int-or-string); each has `kubectl explain` text."""
    name, schema = typed_schema
    for path, prop in properties(schema, name):
        assert "type" in prop or prop.get("x-kubernetes-int-or-string") is True, f"{path} has no type"
        assert isinstance(prop.get("description"), str) and prop["description"].strip(), f"{path} has no description"


def test_array_items_and_maps_are_typed(typed_schema: tuple[str, JSON]) -> None:
    """Array items and map values carry a type too (the apiserver requires it)."""
    name, schema = typed_schema
    for path, node in nodes(schema, name):
        if node.get("type") == "array":
            assert "type" in node["items"], f"{path}[] has no type"
        if isinstance(node.get("additionalProperties"), dict):
            assert "type" in node["additionalProperties"], f"{path}{{}} has no type"


def test_no_json_schema_only_constructs(typed_schema: tuple[str, JSON]) -> None:
    """No $ref, $defs, const, title, null types or defaults of null: OpenAPI v3.0 structural only."""
    name, schema = typed_schema
    for path, node in nodes(schema, name):
        for key in ("$ref", "$defs", "const", "title", "oneOf", "allOf", "not", "nullable"):
            assert key not in node, f"{path} has {key}"
        assert node.get("type") != "null", f"{path} has a null type"
        assert not isinstance(node.get("type"), list), f"{path} has a list of types"
        if "default" in node:
            assert node["default"] is not None, f"{path} defaults to null"
        assert not isinstance(node.get("exclusiveMinimum"), int | float) or isinstance(
            node.get("exclusiveMinimum"), bool
        ), f"{path} uses a numeric exclusiveMinimum (JSON Schema 2020-12, not OpenAPI v3.0)"


def test_any_of_only_for_int_or_string(spec_schema: JSON) -> None:
    """anyOf appears only on x-kubernetes-int-or-string nodes (epochs, batchSize), with integer and string branches."""
    found = []
    for path, node in nodes(spec_schema):
        if "anyOf" in node:
            found.append(path)
            assert node.get("x-kubernetes-int-or-string") is True, f"{path} has anyOf without int-or-string"
            assert "type" not in node, f"{path}: int-or-string nodes must not set type"
            assert [b.get("type") for b in node["anyOf"]] == ["integer", "string"]
    assert found == ["spec.training.epochs", "spec.training.batchSize"]


def test_int_or_string_bounds_and_defaults(spec_schema: JSON) -> None:
    """epochs and batchSize default to auto; a CEL rule bounds integers to [1, 100000] and strings to 'auto'."""
    training = spec_schema["properties"]["training"]["properties"]
    for field in ("epochs", "batchSize"):
        node = training[field]
        assert node["default"] == "auto"
        [rule] = node["x-kubernetes-validations"]
        assert rule["rule"] == "type(self) == int ? (self >= 1 && self <= 100000) : self == 'auto'"
        assert field in rule["message"]


def test_int_or_string_matches_apiserver_pattern(spec_schema: JSON) -> None:
    """Types inside anyOf are allowed only as exactly [{type: integer}, {type: string}]."""
    for path, node in nodes(spec_schema):
        if any("type" in branch for branch in node.get("anyOf", [])):
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], f"{path}: {node['anyOf']}"


def test_enums_and_bounds_carried_over(spec_schema: JSON) -> None:
    """pydantic constraints become OpenAPI ones: enums, min/max, exclusive bounds, patterns, defaults."""
    props = spec_schema["properties"]
    assert props["dataset"]["properties"]["format"]["enum"] == ["auto", "chat", "instruction", "completion", "text"]
    assert props["dataset"]["properties"]["format"]["type"] == "string"
    assert props["storage"]["properties"]["addressingStyle"]["enum"] == ["auto", "path", "virtual"]
    lr = props["training"]["properties"]["learningRate"]
    assert (lr["minimum"], lr["exclusiveMinimum"], lr["maximum"], lr["default"]) == (0.0, True, 1.0, 2e-4)
    r = props["lora"]["properties"]["r"]
    assert (r["type"], r["minimum"], r["maximum"], r["default"]) == ("integer", 1, 1024, 16)
    assert props["dataset"]["properties"]["train"]["pattern"].startswith("^")
    assert props["dataset"]["required"] == ["train"]
    tolerations = props["resources"]["properties"]["tolerations"]
    assert tolerations["type"] == "array"
    assert tolerations["items"]["type"] == "object"
    assert props["resources"]["properties"]["nodeSelector"]["additionalProperties"] == {"type": "string"}


# -- status ----------------------------------------------------------------------------------------


def test_status_documents_what_kubectl_explain_should_show(root_schema: JSON) -> None:
    """`kubectl explain finetunejob.status --recursive` lists these, each typed and described."""
    status = root_schema["properties"]["status"]
    expected = {
        "phase",
        "message",
        "observedGeneration",
        "conditions",
        "acceptedSpec",
        "preflight",
        "progress",
        "metrics",
        "checkpoints",
        "artifacts",
        "model",
        "evaluation",
        "error",
        "attempts",
        "worldSize",
        "lastFailure",
        "startTime",
        "completionTime",
        "trainedTokens",
        "gpuSeconds",
    }
    assert set(status["properties"]) == expected
    assert "x-kubernetes-preserve-unknown-fields" not in status
    assert status["properties"]["phase"]["enum"][0] == "Pending"
    condition = status["properties"]["conditions"]["items"]
    assert set(condition["required"]) == {"type", "status", "reason", "lastTransitionTime"}
    assert condition["properties"]["lastTransitionTime"]["format"] == "date-time"
    for path, prop in properties(status, "status"):
        assert "_" not in path.rsplit(".", 1)[-1], f"{path} is not camelCase"
        assert "default" not in prop or path.startswith("status.acceptedSpec"), f"{path}: status has no defaults"


def test_accepted_spec_has_the_spec_schema(root_schema: JSON) -> None:
    """status.acceptedSpec is the spec as it was accepted: the same schema, CEL rules included."""
    spec = root_schema["properties"]["spec"]
    accepted = root_schema["properties"]["status"]["properties"]["acceptedSpec"]
    assert {k: v for k, v in accepted.items() if k != "description"} == {
        k: v for k, v in spec.items() if k != "description"
    }
    assert "frozen at admission" in accepted["description"]


def test_printer_columns_point_at_status_fields(crd: JSON, root_schema: JSON) -> None:
    """Every .status column names a field the status schema declares (a rename would blank a column)."""
    [version] = crd["spec"]["versions"]
    for column in version["additionalPrinterColumns"]:
        path = column["jsonPath"].lstrip(".").split(".")
        if path[0] != "status":
            continue
        node = root_schema["properties"]["status"]
        for part in path[1:]:
            assert part in node.get("properties", {}), f"{column['name']}: {column['jsonPath']} is not in the schema"
            node = node["properties"][part]
        expected = {"string": {"string"}, "number": {"number", "integer"}, "integer": {"integer"}}[column["type"]]
        assert node["type"] in expected, column


def test_preflight_status_carries_the_data_quality_report_and_warnings(root_schema: JSON, spec_schema: JSON) -> None:
    """`kubectl explain finetunejob.status.preflight` shows the quality numbers and the warnings, and
    spec.preflight.failOnWarnings is a described boolean that defaults to false."""
    preflight = root_schema["properties"]["status"]["properties"]["preflight"]["properties"]
    assert {"quality", "warnings"} <= set(preflight)
    assert set(preflight["quality"]["properties"]) == {
        "p50RowTokens",
        "p95RowTokens",
        "maxRowTokens",
        "truncatedShare",
        "duplicateRows",
        "nearDuplicateRows",
        "leakedValidationRows",
        "emptyAnswers",
        "rowsPerFormat",
    }
    assert preflight["quality"]["properties"]["rowsPerFormat"]["additionalProperties"] == {"type": "integer"}
    warning = preflight["warnings"]["items"]
    assert set(warning["properties"]) == {"code", "message", "field", "example"}
    assert warning["required"] == ["code"]
    fail = spec_schema["properties"]["preflight"]["properties"]["failOnWarnings"]
    assert fail["type"] == "boolean" and fail["default"] is False and "DataQualityFailed" in fail["description"]
