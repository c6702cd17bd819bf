"""The preflight's memory estimate stays within ±30% of the measured peak of a LoRA step on CPU
(issue 11, item 5: calibration). bench/memory_calibration.py does the measuring, each shape in its
own process; docs/scaling.md has the full table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("checkpointing", [False, True], ids=["stored", "checkpointed"])
def test_estimate_is_within_30_percent_of_the_measured_peak(tmp_path: Path, checkpointing: bool) -> None:
    out = tmp_path / "calibration.json"
    command = [sys.executable, str(ROOT / "bench" / "memory_calibration.py"), "--shapes", "h512-l4", "--json", str(out)]
    subprocess.run(command + (["--checkpointing"] if checkpointing else []), check=True, timeout=300)
    (row,) = json.loads(out.read_text())
    assert 0.7 <= row["ratio"] <= 1.3, row
