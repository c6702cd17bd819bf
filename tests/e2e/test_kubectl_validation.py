"""``kubectl apply -f`` of a FineTuneJob meets the API server's schema check, as a user's would on a real cluster.

kubectl sends ``fieldValidation=Strict`` by default; the emulated API (``harness.schema_validation``) checks the
object against the generated CRD's ``openAPIV3Schema``, CEL rules included. A bad manifest is refused before it is
stored (so the operator never sees it) with the field named in kubectl's error; the manifests we ship and document
are accepted as they are, without a field pruned.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import ROOT
from harness import RunningApiServer
from harness.finetunejob import GROUP, NAMESPACE, PLURAL, VERSION, finetunejob

pytestmark = pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl is not installed (make test installs it as root)"
)


def kubectl_apply(kube_api: RunningApiServer, manifest: Path) -> subprocess.CompletedProcess[str]:
    assert kube_api.kubeconfig is not None
    env = {**os.environ, "KUBECACHEDIR": str(manifest.parent / "kube-cache")}
    command = ["kubectl", "--kubeconfig", str(kube_api.kubeconfig), "apply", "-f", str(manifest)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)


def write(tmp_path: Path, body: dict[str, Any]) -> Path:
    path = tmp_path / f"{body['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def stored(kube_api: RunningApiServer, name: str, namespace: str = NAMESPACE) -> dict[str, Any] | None:
    return kube_api.api.get_object(GROUP, VERSION, PLURAL, namespace, name)


def documented_finetunejobs() -> list[Any]:
    """The quickstart manifest and every FineTuneJob in a YAML block of README.md and docs/*.md."""
    quickstart = ROOT / "examples/quickstart/finetunejob.yaml"
    found = [pytest.param(yaml.safe_load(quickstart.read_text()), id="examples/quickstart")]
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in re.findall(r"```ya?ml\n(.*?)```", doc.read_text(), re.S):
            for obj in yaml.safe_load_all(block):
                if isinstance(obj, dict) and obj.get("kind") == "FineTuneJob":
                    found.append(pytest.param(obj, id=f"{doc.relative_to(ROOT)}:{obj['metadata']['name']}"))
    return found


@pytest.mark.parametrize("manifest", documented_finetunejobs())
def test_the_finetunejobs_we_ship_and_document_are_accepted_as_written(
    kube_api: RunningApiServer, tmp_path: Path, manifest: dict[str, Any]
) -> None:
    namespace = manifest["metadata"].get("namespace", NAMESPACE)
    if kube_api.api.get_object("", "v1", "namespaces", None, namespace) is None:
        kube_api.api.create_object(("", "v1", "namespaces"), None, {"metadata": {"name": namespace}})
    result = kubectl_apply(kube_api, write(tmp_path, manifest))
    assert result.returncode == 0, result.stderr
    assert "created" in result.stdout and "Warning" not in result.stderr, result.stderr
    obj = stored(kube_api, manifest["metadata"]["name"], namespace)
    assert obj is not None and obj["spec"] == manifest["spec"]  # nothing pruned: every field is in the schema


BAD_MANIFESTS = [
    pytest.param(
        {"training": {"epochs": "many"}},
        [
            'The FineTuneJob "bad" is invalid',
            "spec.training.epochs: Invalid value: \"string\": epochs must be 'auto' or an integer between 1 and 100000",
        ],
        id="epochs-many",
    ),
    pytest.param(
        {"training": {"learningrate": 1e-4}},
        ['strict decoding error: unknown field "spec.training.learningrate"'],
        id="learningrate-typo",
    ),
    pytest.param(
        {"lora": {"r": 0, "alpha": 16}},
        ["spec.lora.r: Invalid value: 0: spec.lora.r in body should be greater than or equal to 1"],
        id="lora-r-0",
    ),
    pytest.param(
        {"training": {"lrScheduler": "step"}},
        ['spec.training.lrScheduler: Unsupported value: "step"'],
        id="lr-scheduler",
    ),
]


def bad(training_or_spec: dict[str, Any], name: str = "bad") -> dict[str, Any]:
    body = finetunejob(name, "bucket-x", "http://127.0.0.1:1", training=training_or_spec.get("training"))
    body["spec"].update({key: value for key, value in training_or_spec.items() if key != "training"})
    return body


@pytest.mark.parametrize(("change", "shown"), BAD_MANIFESTS)
def test_a_bad_manifest_is_refused_with_the_field_named_and_nothing_stored(
    kube_api: RunningApiServer, tmp_path: Path, change: dict[str, Any], shown: list[str]
) -> None:
    result = kubectl_apply(kube_api, write(tmp_path, bad(change)))
    assert result.returncode != 0
    for text in shown:
        assert text in result.stderr, result.stderr
    assert stored(kube_api, "bad") is None
    assert kube_api.api.objects_of(GROUP, VERSION, PLURAL) == []


@pytest.mark.parametrize(("change", "shown"), BAD_MANIFESTS)
def test_a_bad_edit_of_an_applied_finetunejob_is_refused_and_the_job_is_unchanged(
    kube_api: RunningApiServer, tmp_path: Path, change: dict[str, Any], shown: list[str]
) -> None:
    good = finetunejob("bad", "bucket-x", "http://127.0.0.1:1")
    first = kubectl_apply(kube_api, write(tmp_path, good))
    assert first.returncode == 0 and "finetunejob.kubetune.io/bad created" in first.stdout, first.stderr
    before = stored(kube_api, "bad")
    rv = kube_api.api.resource_version

    result = kubectl_apply(kube_api, write(tmp_path, bad(change)))
    assert result.returncode != 0
    for text in shown:
        assert text in result.stderr, result.stderr
    assert stored(kube_api, "bad") == before and kube_api.api.resource_version == rv
