"""The preflight's memory estimate against measured peak memory of a LoRA training step, on CPU.

    python bench/memory_calibration.py            # three small Llama shapes, fp32, a table
    python bench/memory_calibration.py --json out.json

Each shape trains in its own subprocess: a random Llama built in memory from its config (no file
mapping, so every weight is anonymous memory), LoRA r=16 on all linear layers through
`modeling.add_lora`, AdamW, 3 optimizer steps of random tokens. Measured = peak RSS (getrusage)
minus the RSS just before the model is built (Python, torch and libraries). Estimated =
`memory.estimate_memory` for the same shape, precision fp32 and batch, less its CUDA overhead
term (there is no CUDA context on CPU). The ratio says how far the formulas are from what the
allocator really held, fragmentation and temporaries included: docs/scaling.md quotes it, and
tests/integration/test_memory_calibration.py checks one shape stays within ±30%.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "api"), str(ROOT / "trainer")]

SHAPES: dict[str, dict[str, Any]] = {
    "h512-l4": {"hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 4, "num_attention_heads": 8,
                "num_key_value_heads": 4, "vocab_size": 32000, "tie_word_embeddings": False},
    "h1024-l8": {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 8, "num_attention_heads": 16,
                 "num_key_value_heads": 4, "vocab_size": 32000, "tie_word_embeddings": False},
    "h1536-l12": {"hidden_size": 1536, "intermediate_size": 4096, "num_hidden_layers": 12, "num_attention_heads": 12,
                  "num_key_value_heads": 4, "vocab_size": 32000, "tie_word_embeddings": False},
}  # fmt: skip
SEQ, BATCH, STEPS = 1024, 2, 3


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def measure(shape: dict[str, Any], seq: int, batch: int, checkpointing: bool) -> int:
    """Peak RSS growth of LoRA training steps on a model of `shape`, in this process."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from kubetune_api.spec import LoRASpec
    from kubetune_trainer import modeling

    torch.manual_seed(0)
    config = AutoConfig.for_model("llama", **shape)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, shape["vocab_size"], (batch, seq), generator=generator)
    before = rss_bytes()
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)  # type: ignore[no-untyped-call]
    if checkpointing:  # as the trainer enables it (modeling.load_model): non-reentrant
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = modeling.add_lora(model, LoRASpec(r=16, alpha=32, dropout=0.0))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    for _ in range(STEPS):
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before


def estimate(shape: dict[str, Any], seq: int, batch: int, checkpointing: bool) -> int:
    from kubetune_api.spec import LoRASpec, Precision, TrainingSpec
    from kubetune_trainer.memory import estimate_memory

    training = TrainingSpec(
        max_seq_length=seq, batch_size=batch, precision=Precision.FP32, gradient_checkpointing=checkpointing
    )
    result = estimate_memory(shape, training, LoRASpec(r=16, alpha=32, dropout=0.0), batch)
    return result.total_bytes - result.overhead_bytes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--seq", type=int, default=SEQ)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing (non-reentrant)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--measure-one", default=None, help=argparse.SUPPRESS)  # the subprocess's entry
    args = parser.parse_args(argv)
    if args.measure_one:
        measured = measure(SHAPES[args.measure_one], args.seq, args.batch, args.checkpointing)
        print(json.dumps({"measured": measured}))
        return
    rows = []
    for name in args.shapes.split(","):
        child = subprocess.run(
            [sys.executable, __file__, "--measure-one", name, "--seq", str(args.seq), "--batch", str(args.batch)]
            + (["--checkpointing"] if args.checkpointing else []),
            capture_output=True,
            text=True,
            check=True,
            env={"OMP_NUM_THREADS": "2", "PATH": "/usr/bin:/bin", "MALLOC_MMAP_THRESHOLD_": "131072"},
        )
        measured = int(json.loads(child.stdout.strip().splitlines()[-1])["measured"])
        estimated = estimate(SHAPES[name], args.seq, args.batch, args.checkpointing)
        rows.append({"shape": name, "estimated": estimated, "measured": measured, "ratio": estimated / measured})
    mode = "gradient checkpointing" if args.checkpointing else "no checkpointing"
    print(f"LoRA r=16 all-linear, fp32 on CPU, batch {args.batch} x seq {args.seq}, {mode}, {STEPS} AdamW steps\n")
    print("| shape | estimated (MiB) | measured peak (MiB) | estimate / measured |")
    print("|---|---|---|---|")
    for row in rows:
        estimated, measured = row["estimated"] / 2**20, row["measured"] / 2**20
        print(f"| {row['shape']} | {estimated:,.0f} | {measured:,.0f} | {row['ratio']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
