"""`kubectl explain finetunejob.status --recursive` documents the status, as it would on a real cluster.

The emulated API serves each custom resource's openAPIV3Schema in /openapi/v3 (as kube-apiserver
publishes a CRD's schema), and kubectl renders it: every description comes from the pydantic
models the CRD is generated from (kubetune_api.status, kubetune_api.spec).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from harness import RunningApiServer
from kubetune_api.status import FineTuneJobStatus

pytestmark = pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl is not installed (make test installs it as root)"
)


def explain(kube_api: RunningApiServer, tmp_path: Path, *args: str) -> str:
    assert kube_api.kubeconfig is not None
    env = {**os.environ, "KUBECACHEDIR": str(tmp_path / "kube-cache")}
    command = ["kubectl", "--kubeconfig", str(kube_api.kubeconfig), "explain", *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_explain_status_recursive_lists_every_status_field(kube_api: RunningApiServer, tmp_path: Path) -> None:
    text = explain(kube_api, tmp_path, "finetunejob.status", "--recursive")
    for field in ("phase", "conditions", "progress", "metrics", "checkpoints", "artifacts", "preflight", "error"):
        assert f"\n  {field}\t<" in text, f"{field} missing from:\n{text}"
    for nested in ("lastTransitionTime", "trainLoss", "adapterUri", "estimatedGpuMemoryBytes", "exitCode", "eta"):
        assert f" {nested}\t<" in text, f"{nested} missing from:\n{text}"
    assert "\n  attempts\t<integer>" in text


def test_explain_shows_the_models_descriptions(kube_api: RunningApiServer, tmp_path: Path) -> None:
    status = explain(kube_api, tmp_path, "finetunejob.status")
    assert " ".join(str(FineTuneJobStatus.__doc__).split()) in " ".join(status.split())
    eta = explain(kube_api, tmp_path, "ftj.status.progress.eta")
    assert "45s, 12m, 3h05m" in eta
    reason = explain(kube_api, tmp_path, "ftj.status.error.reason")
    assert "DatasetInvalid" in reason
    learning_rate = explain(kube_api, tmp_path, "ftj.spec.training.learningRate")
    assert "Peak learning rate" in learning_rate
    cancel = " ".join(explain(kube_api, tmp_path, "ftj.spec.cancel").split())
    assert "stop the job for good and keep the object" in cancel and "Cancelled is terminal" in cancel
    fail_on_warnings = " ".join(explain(kube_api, tmp_path, "ftj.spec.preflight.failOnWarnings").split())
    assert "Fail the job (reason DataQualityFailed, not retried) when the preflight's data-quality" in fail_on_warnings
    warnings = explain(kube_api, tmp_path, "ftj.status.preflight.warnings")
    assert "code\t<string> -required-" in warnings and "example\t<string>" in warnings
