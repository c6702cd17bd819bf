"""Generate the FineTuneJob CustomResourceDefinition from the pydantic spec and status models.

Pydantic emits JSON Schema (draft 2020-12); Kubernetes wants a *structural* OpenAPI v3.0
schema. This module is the translation: inline $refs, drop null branches of optionals,
turn `int | "auto"` into x-kubernetes-int-or-string, `const` into `enum`, and numeric
`exclusiveMinimum: x` into `minimum: x, exclusiveMinimum: true`.

    python -m kubetune_api.crd > crds/kubetune.io_finetunejobs.yaml
    python -m kubetune_api.crd -o crds/kubetune.io_finetunejobs.yaml -o charts/kubetune/files/crds/...  # make crds
    python -m kubetune_api.crd --check crds/kubetune.io_finetunejobs.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from kubetune_api.spec import API_GROUP, API_VERSION, KIND, PLURAL, FineTuneJobSpec
from kubetune_api.status import FineTuneJobStatus

JSON = dict[str, Any]

_DROPPED_KEYS = {"title", "examples", "$defs"}

PRINTER_COLUMNS: list[JSON] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Lifecycle phase."},
    {
        "name": "Progress",
        "type": "string",
        "jsonPath": ".status.progress.percent",
        "description": "Percent done.",
    },
    {
        "name": "Loss",
        "type": "number",
        "jsonPath": ".status.metrics.trainLoss",
        "description": "Latest train loss.",
    },
    {
        "name": "Eval",
        "type": "string",
        "jsonPath": ".status.evaluation.result",
        "description": "The evaluation gate's verdict: Passed or Failed (empty without a gate).",
    },
    {
        "name": "ETA",
        "type": "string",
        "jsonPath": ".status.progress.eta",
        "description": "Estimated time left.",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Model", "type": "string", "jsonPath": ".spec.baseModel.uri", "priority": 1},
    {"name": "GPUs", "type": "integer", "jsonPath": ".spec.resources.gpus", "priority": 1},
    {"name": "Attempts", "type": "integer", "jsonPath": ".status.attempts", "priority": 1},
    {
        "name": "GPU-Hours",
        "type": "number",
        "jsonPath": ".status.preflight.fit.gpuHours",
        "description": "Estimated GPU-hours (preflight).",
        "priority": 1,
    },
]


def _resolve(node: Any, defs: JSON) -> Any:
    """Inline every $ref, recursively (the spec model has no recursive types)."""
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].split("/")[-1]]
        merged = {**_resolve(target, defs), **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve(merged, defs)
    return {k: _resolve(v, defs) for k, v in node.items()}


def _is_null(branch: JSON) -> bool:
    return branch.get("type") == "null"


def _structural(node: JSON) -> JSON:
    """Rewrite one resolved JSON-Schema node (and its children) into structural OpenAPI v3.0."""
    node = {k: v for k, v in node.items() if k not in _DROPPED_KEYS}

    if "anyOf" in node:
        branches = [_structural(b) for b in node.pop("anyOf") if not _is_null(b)]
        if node.get("default", ...) is None:
            node.pop("default")
        if len(branches) == 1:
            node = {**branches[0], **node}
        elif {b.get("type") for b in branches} == {"integer", "string"}:
            # int-or-string is the one place a structural schema may use typed anyOf branches.
            node["x-kubernetes-int-or-string"] = True
            node["anyOf"] = branches
        else:
            raise ValueError(f"cannot express anyOf {branches} in a structural schema")

    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(bound), int | float) and not isinstance(node.get(bound), bool):
            node[inclusive] = node[bound]
            node[bound] = True
    if "properties" in node:
        node["properties"] = {k: _structural(v) for k, v in node["properties"].items()}
        node.setdefault("type", "object")
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = _structural(node["additionalProperties"])
    elif isinstance(node.get("additionalProperties"), bool):
        # False: structural schemas prune unknown fields anyway. True (a status model that keeps
        # unknown fields when read): not allowed beside `properties`; the apiserver prunes them.
        node.pop("additionalProperties")
    if isinstance(node.get("items"), dict):
        node["items"] = _structural(node["items"])
    return node


def _openapi(model: type[BaseModel]) -> JSON:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _structural(_resolve(raw, raw.get("$defs", {})))


def _without_defaults(node: Any) -> Any:
    """Status is written by the operator alone: the apiserver must not default anything into it."""
    if isinstance(node, list):
        return [_without_defaults(item) for item in node]
    if not isinstance(node, dict):
        return node
    return {key: _without_defaults(value) for key, value in node.items() if key != "default"}


def spec_openapi_schema() -> JSON:
    schema = _int_or_string_bounds(_openapi(FineTuneJobSpec))
    schema["description"] = "Desired state: what to fine-tune, on what data, with which settings and resources."
    return schema


def status_openapi_schema() -> JSON:
    """Every status field typed and described; acceptedSpec has the spec's own schema (defaults and all)."""
    schema: JSON = _without_defaults(_openapi(FineTuneJobStatus))
    accepted = schema["properties"]["acceptedSpec"]
    schema["properties"]["acceptedSpec"] = {**spec_openapi_schema(), "description": accepted["description"]}
    return schema


def _int_or_string_bounds(schema: JSON) -> JSON:
    """epochs and batchSize are `auto` or a positive integer.

    The apiserver accepts typed anyOf branches only in the exact int-or-string shape
    ([{type: integer}, {type: string}]), so the bounds are a CEL rule instead.
    """
    training = schema["properties"]["training"]["properties"]
    for field in ("epochs", "batchSize"):
        training[field]["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        training[field]["x-kubernetes-validations"] = [
            {
                "rule": "type(self) == int ? (self >= 1 && self <= 100000) : self == 'auto'",
                "message": f"{field} must be 'auto' or an integer between 1 and 100000",
            }
        ]
    return schema


def build_crd() -> JSON:
    version: JSON = {
        "name": API_VERSION,
        "served": True,
        "storage": True,
        "subresources": {"status": {}},
        "additionalPrinterColumns": PRINTER_COLUMNS,
        "schema": {
            "openAPIV3Schema": {
                "type": "object",
                "description": "FineTuneJob trains a LoRA adapter for a base model on a dataset.",
                "required": ["spec"],
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "metadata": {"type": "object"},
                    "spec": spec_openapi_schema(),
                    # Typed like spec: kopf keeps its bookkeeping in annotations, so nothing
                    # open-ended lives in status (see docs/design-notes.md).
                    "status": status_openapi_schema(),
                },
            }
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{API_GROUP}",
            "labels": {"app.kubernetes.io/name": "kubetune", "app.kubernetes.io/component": "crd"},
        },
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": ["ftj"],
                "categories": ["kubetune"],
            },
            "versions": [version],
        },
    }


def render_crd() -> str:
    header = "# Generated by `python -m kubetune_api.crd` from kubetune_api/spec.py and status.py. Do not edit.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--check", type=Path, nargs="+", help="exit 1 if any of these files differs from the generated CRD"
    )
    parser.add_argument(
        "--output", "-o", type=Path, action="append", help="write the CRD to this file (repeatable) instead of stdout"
    )
    args = parser.parse_args(argv)
    rendered = render_crd()
    if args.check:
        stale = [path for path in args.check if not path.exists() or path.read_text() != rendered]
        for path in stale:
            print(f"{path} is out of date: run `make crds`", file=sys.stderr)
        return 1 if stale else 0
    if args.output:
        for path in args.output:
            path.write_text(rendered)
        return 0
    sys.stdout.write(rendered)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
