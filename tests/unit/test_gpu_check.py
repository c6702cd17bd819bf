"""bench/gpu_check.sh cannot run in CI (no GPU), so its parts are checked here on CPU: the shell
script parses, the family line runs through the trainer's own loader, and the report turns what
the steps leave behind (or their absence) into one table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_script_parses_and_names_every_step() -> None:
    script = ROOT / "bench" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    for step in ("pytest tests/gpu -m cuda", "train_throughput.py --device cuda --shape llama-1b --seq 2048"):
        assert step in text
    assert "family_attention.py --device cuda" in text and "gpu_report.py" in text


@pytest.mark.slow
def test_the_family_line_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "families.json"
    script = str(ROOT / "bench" / "family_attention.py")
    subprocess.run(
        [sys.executable, script, "--device", "cpu", "--json", str(out), "llama", "gemma2", "jamba"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    rows = {r["family"]: r for r in json.loads(out.read_text())["families"]}
    assert (rows["llama"]["attention"], rows["llama"]["packing"]) == ("kubetune_packed_sdpa", "kept")
    assert rows["gemma2"]["attention"] == "eager", "no SDPA in Gemma-2: the next implementation, not a failure"
    assert rows["jamba"]["packing"] == "off (rows leak)"


def report(out: Path) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_report.py"), str(out)], check=True, capture_output=True, text=True
    )
    return result.stdout


def test_the_report_of_a_run_where_nothing_ran_says_so(tmp_path: Path) -> None:
    text = report(tmp_path)
    assert text.startswith("| check | result | details |")
    assert "| CUDA-marked tests | did not run |" in text
    assert "| Llama-3.2-1B shape, seq 2048 | did not run |" in text
    assert "| attention per family | did not run |" in text


def test_the_report_of_a_full_run(tmp_path: Path) -> None:
    (tmp_path / "gpu.txt").write_text("NVIDIA H200, 143771 MiB, 580.159.03\ncuda-tests exit 0\n")
    (tmp_path / "cuda-tests.xml").write_text(
        '<testsuites><testsuite name="pytest" tests="4" failures="0" errors="0" skipped="1"/></testsuites>'
    )
    qlora = {"tokens_per_second": 2345.6, "peak_gib": 11.2, "loaded_gib": 7.3, "estimate_gib": 11.6}
    (tmp_path / "cuda-tests.log").write_text(f"qlora-8b: {json.dumps(qlora | {'attention': 'sdpa'})}\n")
    bench = {
        "peak_tflops": 989.0,
        "sides": {
            "kubetune": {"tokens_per_second": 50000.0, "mfu": 0.41, "peak_memory_gib": 30.1, "token_efficiency": 0.99},
            "baseline": {"tokens_per_second": 20000.0, "mfu": 0.16, "peak_memory_gib": 25.0, "token_efficiency": 0.4},
        },
        "ratio_vs_baseline": 2.5,
    }
    (tmp_path / "bench-1b.json").write_text(json.dumps(bench))
    families = [{"family": "llama", "attention": "sdpa", "packing": "kept", "note": ""}]
    (tmp_path / "families.json").write_text(json.dumps({"device": "cuda", "families": families}))
    text = report(tmp_path)
    assert "| GPU | NVIDIA H200, 143771 MiB, 580.159.03 | cuda-tests exit 0 |" in text
    assert "| CUDA-marked tests | 3 passed, 0 failed, 1 skipped |" in text
    assert "2,346 tokens/s, peak 11.2 GiB" in text
    assert "| Llama-3.2-1B shape, seq 2048: kubetune | 50,000 tokens/s | MFU 41.0% (peak 989.0 TFLOPS)" in text
    assert "| kubetune / HF Trainer + PEFT | 2.50x tokens/s |" in text
    assert "| family llama | attention sdpa | packing kept |" in text
