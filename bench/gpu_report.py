"""The one table bench/gpu_check.sh prints, from what its steps left in a folder.

    python bench/gpu_report.py OUT_DIR

Reads gpu.txt (nvidia-smi and each step's exit status), cuda-tests.xml/.log (the CUDA-marked
tests and the `qlora-8b: {...}` line the 8B-shaped QLoRA step prints), bench-1b.json
(bench/train_throughput.py --json) and families.json (bench/family_attention.py --json). A step
that did not run or failed shows as such; the table is printed either way.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def cuda_tests(out: Path) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    try:
        root = ET.parse(out / "cuda-tests.xml").getroot()
        # pytest writes <testsuites><testsuite .../></testsuites>; an Element without children is
        # falsy, so compare with None rather than `or`.
        found = root if root.tag == "testsuite" else root.find("testsuite")
        suite = found if found is not None else root
        total, failed = int(suite.get("tests", 0)), int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        skipped = int(suite.get("skipped", 0))
        rows.append(("CUDA-marked tests", f"{total - failed - skipped} passed, {failed} failed, {skipped} skipped", ""))
    except (OSError, ET.ParseError):
        rows.append(("CUDA-marked tests", "did not run", "see cuda-tests.log"))
    log = (out / "cuda-tests.log").read_text(errors="replace") if (out / "cuda-tests.log").exists() else ""
    line = next((s for s in log.splitlines() if s.startswith("qlora-8b: ")), None)
    if line is None:
        rows.append(("QLoRA step, Llama-3-8B shape, 4-bit, seq 2048", "no result", "see cuda-tests.log"))
    else:
        r = json.loads(line.removeprefix("qlora-8b: "))
        rows.append(
            (
                "QLoRA step, Llama-3-8B shape, 4-bit, seq 2048",
                f"{r['tokens_per_second']:,.0f} tokens/s, peak {r['peak_gib']} GiB",
                f"weights loaded {r['loaded_gib']} GiB, preflight estimate {r.get('estimate_gib')} GiB, "
                f"attention {r.get('attention')}",
            )
        )
    for dora in (s for s in log.splitlines() if s.startswith("dora-")):
        rows.append((dora.split(":", 1)[0], "losses", dora.split(":", 1)[1].strip()))
    return rows


def bench(out: Path) -> list[tuple[str, str, str]]:
    summary = _json(out / "bench-1b.json")
    if not summary:
        return [("Llama-3.2-1B shape, seq 2048", "did not run", "see bench-1b.log")]
    names = {"kubetune": "kubetune", "baseline": "HF Trainer + PEFT (same rows/step)"}
    rows = []
    for side, numbers in summary["sides"].items():
        mfu = numbers.get("mfu")
        rows.append(
            (
                f"Llama-3.2-1B shape, seq 2048: {names.get(side, side)}",
                f"{numbers['tokens_per_second']:,.0f} tokens/s",
                f"MFU {'-' if mfu is None else f'{mfu:.1%}'} (peak {summary.get('peak_tflops')} TFLOPS), "
                f"peak memory {numbers.get('peak_memory_gib')} GiB, token efficiency {numbers['token_efficiency']:.1%}",
            )
        )
    if "ratio_vs_baseline" in summary:
        rows.append(("kubetune / HF Trainer + PEFT", f"{summary['ratio_vs_baseline']:.2f}x tokens/s", ""))
    return rows


def families(out: Path) -> list[tuple[str, str, str]]:
    data = _json(out / "families.json")
    if not data:
        return [("attention per family", "did not run", "see families.log")]
    return [
        (f"family {r['family']}", f"attention {r['attention']}", f"packing {r['packing']} {r.get('note', '')}".strip())
        for r in data["families"]
    ]


def main(out: Path) -> int:
    gpu = (out / "gpu.txt").read_text().strip().splitlines() if (out / "gpu.txt").exists() else ["?"]
    rows = [("GPU", gpu[0], "; ".join(gpu[1:]))]
    rows += cuda_tests(out) + bench(out) + families(out)
    print("| check | result | details |")
    print("|---|---|---|")
    for check, result, details in rows:
        print(f"| {check} | {result} | {details} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
