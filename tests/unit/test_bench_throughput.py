"""bench/train_throughput.py: its generated chat data and a tiny end-to-end run on CPU.

The numbers the bench prints are not asserted (machines are noisy); what is checked is that the data
is what the README says (deterministic, long-tailed, about 20..1500 tokens) and that the CPU path,
which shares its code with the GPU mode, runs both trainers and prints the ratio.
"""

from __future__ import annotations

import importlib
import json
import statistics
import sys
from pathlib import Path
from types import ModuleType

import pytest

from kubetune_api.spec import DatasetFormat
from kubetune_trainer.data import parse_row
from kubetune_trainer.encode import Encoder

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module("train_throughput")
    finally:
        sys.path.remove(str(BENCH))


def test_number_words(bench: ModuleType) -> None:
    assert bench.number_words(0) == "zero"
    assert bench.number_words(40) == "forty"
    assert bench.number_words(878) == "eight hundred and seventy-eight"
    assert bench.number_words(300) == "three hundred"


def test_chat_rows_are_deterministic_long_tailed_chat(bench: ModuleType) -> None:
    tokenizer = bench.chat_tokenizer()
    rows = bench.chat_rows(tokenizer, 300, seed=0)
    assert rows == bench.chat_rows(tokenizer, 300, seed=0)
    assert rows != bench.chat_rows(tokenizer, 300, seed=1)
    encoder = Encoder(tokenizer, max_seq_length=4096)
    lengths = []
    for i, raw in enumerate(rows):
        row = parse_row(raw, DatasetFormat.CHAT, f"chat.jsonl:{i + 1}")  # valid chat rows
        lengths.append(len(encoder.encode(row).input_ids))
    lengths.sort()
    assert 20 <= lengths[0] <= 40
    assert 1300 <= lengths[-1] <= 1600
    median, mean = statistics.median(lengths), statistics.fmean(lengths)
    assert 180 <= median <= 350
    assert mean > 1.2 * median  # long right tail
    assert {len(r["messages"]) for r in rows} >= {2, 3, 4, 5}  # one turn or more, with or without system


@pytest.mark.slow
def test_cpu_run_prints_the_ratio(bench: ModuleType, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Both trainers, one repeat, a few short rows: the shared report path (tokens/s, ratio) works."""
    args = ["--rows", "24", "--seq", "512", "--batch-size", "2", "--repeats", "1", "--device", "cpu"]
    bench.main([*args, "--json", str(tmp_path / "bench.json")])
    summary = json.loads((tmp_path / "bench.json").read_text())  # what bench/gpu_report.py reads
    assert set(summary["sides"]) == {"kubetune", "baseline"} and summary["ratio_vs_baseline"] > 0
    assert summary["sides"]["kubetune"]["tokens_per_second"] > 0
    out = capsys.readouterr().out
    assert "HF Trainer, same rows/step" in out
    assert "ratio kubetune/baseline, same rows per optimizer step" in out
    assert "6·N" in out


@pytest.mark.parametrize(
    ("seq", "batch", "device", "micro"), [(2048, 8, "cpu", 2), (512, 8, "cpu", 8), (2048, 3, "cpu", 1)]
)
def test_kubetune_micro_batch_follows_batch_size_auto(
    bench: ModuleType, seq: int, batch: int, device: str, micro: int
) -> None:
    """The bench feeds kubetune what `batchSize: auto` would (a token budget per forward pass), as a
    divisor of the step's packed sequences, so both sides still see the same rows per optimizer step."""
    setup = bench.Setup(
        model="quickstart",
        dataset="chat",
        seq_len=seq,
        epochs=1,
        batch_size=batch,
        baseline_micro_batch=8,
        device=device,
    )
    assert bench.auto_micro_batch(setup) == micro


def test_a_micro_batch_that_does_not_divide_the_step_is_refused(bench: ModuleType) -> None:
    with pytest.raises(SystemExit, match="--micro-batch 3: must divide --batch-size 2"):
        bench.main(["--rows", "24", "--seq", "512", "--batch-size", "2", "--micro-batch", "3", "--device", "cpu"])


def test_cpu_run_with_accumulation(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--rows", "24", "--seq", "512", "--batch-size", "2", "--micro-batch", "1", "--repeats", "1"]
    bench.main([*args, "--device", "cpu"])
    assert "1x512 packed x2 accum" in capsys.readouterr().out
