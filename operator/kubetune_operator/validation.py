"""Semantic checks of a FineTuneJob spec, beyond what the CRD schema can say.

The apiserver already enforces types, enums, bounds and the CEL rules of the generated CRD.
This module re-validates against the same pydantic model (a cluster may serve an older
CRD) and adds the rules that only make sense on a cluster. Pure: spec in, errors out. Errors
are worded by the shared formatter, so InvalidSpec reads as `kubetune validate` does.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from kubetune_api.gpus import gpu_type_from_node_selector
from kubetune_api.spec import FineTuneJobSpec, precision_problem, sharding_problem
from kubetune_api.validation_messages import describe_errors

CLUSTER_SCHEMES = ("s3://", "pvc://")


def parse_spec(raw: dict[str, Any]) -> tuple[FineTuneJobSpec | None, list[str]]:
    """Validate by wire (camelCase) names only, as the apiserver does."""
    try:
        return FineTuneJobSpec.model_validate(raw, by_alias=True, by_name=False), []
    except ValidationError as exc:
        return None, describe_errors(exc, FineTuneJobSpec, root="spec")


def uri_rules(raw: dict[str, Any]) -> list[str]:
    """Data and weights must come from the user's buckets or volumes, not the trainer image.

    Checked on the raw spec, so these errors are reported along with any schema errors.
    """

    def at(*path: str) -> Any:
        node: Any = raw
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        return node

    errors: list[str] = []
    uris = {
        "spec.baseModel.uri": at("baseModel", "uri"),
        "spec.dataset.train": at("dataset", "train"),
        "spec.dataset.validation": at("dataset", "validation"),
        "spec.output.uri": at("output", "uri"),
    }
    for field, uri in uris.items():
        if isinstance(uri, str) and not uri.startswith(CLUSTER_SCHEMES):
            errors.append(
                f"{field}: {uri!r} is a path inside the trainer image; on a cluster use s3:// or pvc://"
                " (local paths and file:// work with `kubetune run`)"
            )
    return errors


def resource_rules(spec: FineTuneJobSpec) -> list[str]:
    errors: list[str] = []
    resources = spec.resources
    # nodes > 1 with gpus: 0 is allowed: one gloo rank per CPU pod (how CI proves multi-node).
    gpu = gpu_type_from_node_selector(resources.node_selector)
    if gpu is not None and resources.gpus > gpu.max_per_node:
        errors.append(
            f"spec.resources.gpus: {resources.gpus} GPUs per node, but nodes with {gpu.name} "
            f"(resources.nodeSelector) have at most {gpu.max_per_node}; use resources.nodes for more"
        )
    problem = sharding_problem(spec.training, spec.lora)
    if problem is not None:
        errors.append(f"spec.{problem}")
    problem = precision_problem(spec.training.precision, on_gpu=resources.gpus > 0)
    if problem is not None:
        errors.append(f"spec.{problem} (resources.gpus is 0)")
    return errors


def validate(raw: dict[str, Any]) -> tuple[FineTuneJobSpec | None, list[str]]:
    """The spec, or every error at once (each names its field)."""
    spec, errors = parse_spec(raw)
    reported = {error.split(":", 1)[0] for error in errors}  # one error per field is enough
    errors += [error for error in uri_rules(raw) if error.split(":", 1)[0] not in reported]
    if spec is not None:
        errors += resource_rules(spec)
    return (None, errors) if errors else (spec, [])
