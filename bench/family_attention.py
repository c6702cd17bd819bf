"""Which attention implementation each model family gets, and whether packing survives its check.

    python bench/family_attention.py [--device cuda] [--json out.json]

For every family in tests/model_zoo.py that trains here, a tiny random model is built, loaded
through the trainer's own `modeling.load_model` (attention tried best first) and put through
the run-time packing check, exactly as a training run does. On a GPU this is the line the
GPU check prints per family; on CPU it fills docs/models.md's attention and packing columns.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT / "api", ROOT / "trainer", ROOT / "tests"):
    sys.path.insert(0, str(path))

import torch  # noqa: E402

from kubetune_api.spec import Precision  # noqa: E402
from kubetune_trainer import modeling  # noqa: E402
from kubetune_trainer.errors import KubetuneError  # noqa: E402
from kubetune_trainer.packing_check import check_packing  # noqa: E402
from model_zoo import FAMILIES, build_tiny_model  # noqa: E402


def probe(family: str, device_type: str, work: Path) -> dict[str, object]:
    spec = FAMILIES[family]
    row: dict[str, object] = {"family": family, "kind": spec.kind}
    if spec.refused:
        return row | {"attention": "-", "packing": "-", "note": f"refused: {spec.refused}"}
    model_dir = build_tiny_model(family, work / family)
    numerics = modeling.choose_numerics(Precision.AUTO, device_type)
    started = time.perf_counter()
    try:
        model = modeling.load_model(model_dir, numerics, False, device_type).to(device_type)
        check = check_packing(model, int(model.config.get_text_config().vocab_size), device_type)
    except (KubetuneError, RuntimeError, ValueError) as exc:
        return row | {"attention": "error", "packing": "-", "note": f"{type(exc).__name__}: {exc}"[:200]}
    return row | {
        "attention": modeling.attention_implementation(model),
        "packing": "kept" if check.isolated else "off (rows leak)",
        "leak": round(check.leak, 6),
        "seconds": round(time.perf_counter() - started, 2),
        "note": "",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, help="write the rows here as JSON")
    parser.add_argument("families", nargs="*", help="only these model_types (default: all)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families or list(FAMILIES):
            row = probe(family, args.device, Path(tmp))
            rows.append(row)
            print(f"{row['family']:<20} {row['kind']:<7} {row['attention']:<18} {row['packing']:<16} {row['note']}")
    if args.json:
        args.json.write_text(json.dumps({"device": args.device, "families": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
