"""Fixtures of the chart tests (the machinery is in chart_support.py)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from chart_support import CHART, SCENARIOS, Rendered, install_scenario


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Rendered]]:
    """Every ci/*-values.yaml scenario, installed once per session."""
    out = {s: install_scenario(s, tmp_path_factory.mktemp(f"helm-{s}")) for s in SCENARIOS}
    yield out


@pytest.fixture
def chart_copy(tmp_path: Path) -> Path:
    """A scratch copy of the chart (lint with other values: helm-sdkpy's lint reads the chart's values.yaml only)."""
    dest = tmp_path / "kubetune"
    shutil.copytree(CHART, dest)
    return dest
