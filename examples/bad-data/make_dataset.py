"""Generate a deliberately bad dataset: every data-quality warning of docs/data.md#quality fires.

    python examples/bad-data/make_dataset.py examples/bad-data

It is the quickstart's task (number words -> digits) with the mistakes real datasets carry:
rows repeated exactly and up to case and punctuation, validation rows copied from training,
answers with nothing in them ('.', a zero-width space), prompts far longer than
training.maxSeqLength (their answers are cut away), and one row exported in two formats at once.
`kubetune validate examples/bad-data/finetunejob.yaml` shows the report. Deterministic.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

# The quickstart's number words, loaded by path: both generators are called make_dataset.py.
_spec = importlib.util.spec_from_file_location(
    "quickstart_dataset", Path(__file__).parent.parent / "quickstart" / "make_dataset.py"
)
assert _spec is not None and _spec.loader is not None
_quickstart = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_quickstart)
in_words = _quickstart.in_words


def row(n: int) -> dict[str, object]:
    return {"prompt": f"{in_words(n)} =>", "completion": f" {n}"}


def main(out: Path) -> None:
    train: list[dict[str, object]] = [row(n) for n in range(100, 140)]
    train += [row(n) for n in (100, 101, 102, 103)]  # exact copies
    train += [{"prompt": f"{in_words(n).upper()}!! =>", "completion": f" {n}"} for n in (104, 105, 106)]  # near
    filler = "please read the following number carefully and write it in digits " * 4
    train += [{"prompt": f"{filler}{in_words(n)} =>", "completion": f" {n}"} for n in (140, 141, 142)]  # truncated
    train += [{"prompt": "one to twenty =>", "completion": " " + " ".join(str(i) for i in range(1, 21))}]
    train += [{"prompt": "nine hundred and one =>", "completion": "."}]  # no answer
    train += [{"prompt": "nine hundred and two =>", "completion": "\u200b"}]  # a zero-width space
    mixed: dict[str, object] = {**row(903), "messages": [{"role": "user", "content": "nine hundred and three"}]}
    train.append(mixed)  # carries both formats' keys; read as completion
    validation = [row(n) for n in range(200, 207)] + [row(n) for n in (110, 111, 112)]  # three leak
    for name, rows in (("train.jsonl", train), ("validation.jsonl", validation)):
        (out / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
