"""Fixtures every operator end-to-end module shares: the test kubelet, the test's client with the S3
Secret in place, and the operator as a real process. Test modules load them with
`pytest_plugins = ["operator_fixtures"]`; a module that needs another variant defines its own."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_env import Kube, OperatorProcess, operator_process, s3_secret

from conftest import ROOT
from harness import Cluster

# Pods import this checkout's trainer, as the operator process does (harness/operator_process.py),
# not whichever tree the venv's editable install points at (a second worktree sharing the venv).
SOURCES = os.pathsep.join(str(ROOT / d) for d in ("api", "trainer"))


@pytest.fixture
def cluster(kube_api: Any, tmp_path: Path) -> Iterator[Cluster]:
    env = {"HF_HUB_OFFLINE": "1", "AWS_DEFAULT_REGION": "us-east-1", "PYTHONPATH": SOURCES}
    with Cluster(kube_api, work_root=tmp_path / "nodes", extra_env=env) as running:
        yield running


@pytest.fixture
def kube(kube_api: Any) -> Kube:
    kube = Kube(kube_api.api_client())
    kube.core.create_namespaced_secret("default", s3_secret())
    return kube


@pytest.fixture
def operator(kube_api: Any, tmp_path: Path) -> Iterator[OperatorProcess]:
    process = operator_process(kube_api.kubeconfig, tmp_path / "operator.log").start()
    yield process
    process.stop()
