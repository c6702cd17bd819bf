"""Pytest fixtures for the harness; load with ``pytest_plugins = ["harness.fixtures"]``.

(``tests/`` is on sys.path through its conftest.py, so the package imports as ``harness``.)

- ``kube_api``: a ``RunningApiServer`` with the FineTuneJob CRD and the ``default`` namespace;
  ``kube_api.kubeconfig`` is a kubeconfig for it in ``tmp_path``.
- ``kube_cluster``: a ``Cluster`` (Job controller + kubelet, ``run_pods=True``) on ``kube_api``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .apiserver import RunningApiServer, run_apiserver
from .cluster import Cluster

ROOT = Path(__file__).resolve().parents[2]
FTJ_CRD = ROOT / "crds" / "kubetune.io_finetunejobs.yaml"


@pytest.fixture
def kube_api(tmp_path: Path) -> Iterator[RunningApiServer]:
    server = run_apiserver([FTJ_CRD])
    try:
        server.write_kubeconfig(tmp_path / "kubeconfig")
        yield server
    finally:
        server.stop()


@pytest.fixture
def kube_cluster(kube_api: RunningApiServer, tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(kube_api, work_root=tmp_path / "pods").start()
    try:
        yield cluster
    finally:
        cluster.stop()
