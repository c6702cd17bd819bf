"""One wording for a spec mistake, wherever it is caught (issue 9, item 7).

`kubetune validate job.yaml` and the operator's InvalidSpec condition and Warning Event print the
same line for the same mistake, because both go through kubetune_api.validation_messages.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune_api.status import ConditionType, FineTuneJobStatus
from kubetune_operator.decide import Snapshot, decide
from kubetune_operator.settings import OperatorSettings
from kubetune_trainer.cli.kubetune import read_manifest
from kubetune_trainer.errors import InvalidSpec

MANIFEST: dict[str, Any] = {
    "apiVersion": "kubetune.io/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "ft"},
    "spec": {
        "baseModel": {"uri": "s3://models/llama/"},
        "dataset": {"train": "s3://data/train.jsonl"},
        "output": {"uri": "s3://artifacts/run/"},
        "training": {"learningRate": 1e-4},
    },
}

# (what the user wrote, the line every surface prints)
CASES = [
    pytest.param(
        ("training", "learningrate", 1e-3),
        "spec.training.learningrate: unknown field; did you mean learningRate?",
        id="typo",
    ),
    pytest.param(
        ("training", "epochs", "many"), "spec.training.epochs: must be an integer or 'auto', got 'many'", id="union"
    ),
    pytest.param(
        ("baseModel", "uri", "hf://org/llama"),
        "spec.baseModel.uri: 'hf://org/llama': hf:// is not accepted: kubetune never downloads from a model hub",
        id="hf-uri",
    ),
    pytest.param(
        ("storage", "endpoint", "minio:9000"),
        "spec.storage.endpoint: must be an http:// or https:// URL, e.g. https://minio.example:9000, got 'minio:9000'",
        id="named-pattern",
    ),
    pytest.param(
        ("evaluation", "gate", {"metric": "exact_match", "threshold": 0.5}),
        "spec.evaluation.gate: metric exact_match needs generated answers: set evaluation.exactMatch: true, "
        "or gate on evalLoss or perplexity",
        id="gate-on-generation-without-generation",
    ),
    pytest.param(
        ("evaluation", "metric", "numeric"),
        "spec.evaluation.metric: numeric is only computed when evaluation.exactMatch is true",
        id="metric-without-generation",
    ),
    pytest.param(
        ("evaluation", "gate", {"metric": "evalLoss"}),
        "spec.evaluation.gate: set threshold, mustBeatBaseline or both: a gate without a bar passes everything",
        id="gate-without-a-bar",
    ),
    pytest.param(
        ("evaluation", "gate", {"metric": "perplexity", "threshold": 10, "mustBeatBaselin": True}),
        "spec.evaluation.gate.mustBeatBaselin: unknown field; did you mean mustBeatBaseline?",
        id="gate-typo",
    ),
    pytest.param(
        ("dataset", "validationSplit", 0),
        "spec: evaluation.gate needs validation rows: set dataset.validation or a dataset.validationSplit above 0",
        id="gate-without-validation-rows",
    ),
]


def edited(section: str, key: str, value: Any) -> dict[str, Any]:
    manifest = copy.deepcopy(MANIFEST)
    manifest["spec"].setdefault(section, {})[key] = value
    if (section, key) == ("dataset", "validationSplit"):  # no validation rows, for a gate that needs them
        manifest["spec"]["evaluation"] = {"gate": {"metric": "evalLoss", "threshold": 2.0}}
    return manifest


@pytest.mark.parametrize(("edit", "line"), CASES)
def test_kubetune_validate_and_the_operator_print_the_same_line(
    edit: tuple[str, str, Any], line: str, tmp_path: Path
) -> None:
    manifest = edited(*edit)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    with pytest.raises(InvalidSpec) as local:
        read_manifest(path)
    assert f"{path}: {line}" in str(local.value)
    assert "Extra inputs" not in str(local.value) and "^" not in str(local.value)  # no pydantic jargon, no regex

    snapshot = Snapshot(
        name="ft",
        namespace="team",
        generation=1,
        spec=manifest["spec"],
        status=FineTuneJobStatus(),
        now=datetime(2026, 12, 3, tzinfo=UTC),
    )
    decision = decide(snapshot, OperatorSettings())
    condition = decision.status.condition(ConditionType.SPEC_VALID)
    assert condition is not None and condition.status == "False" and line in condition.message
    [event] = [e for e in decision.events if e.reason == "InvalidSpec"]
    assert event.type == "Warning" and line in event.message
    assert decision.status.error is not None and line in decision.status.error.message


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({**MANIFEST, "kind": "FinetuneJob"}, "kind is 'FinetuneJob'; did you mean FineTuneJob?"),
        ({**MANIFEST, "apiVersion": "kubetune.io/v1"}, "apiVersion is 'kubetune.io/v1'; a FineTuneJob's apiVersion"),
    ],
    ids=["kind", "apiVersion"],
)
def test_a_wrong_kind_or_api_version_is_named_as_such(document: dict[str, Any], message: str, tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(InvalidSpec) as error:
        read_manifest(path)
    assert message in str(error.value) and "found 0" not in str(error.value)
