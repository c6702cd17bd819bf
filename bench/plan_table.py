"""The planner's table for Llama-3.2-1B, 3.1-8B and 3.1-70B shapes × bf16 LoRA, QLoRA and FSDP.

    python bench/plan_table.py                 # markdown, as docs/scaling.md shows it
    python bench/plan_table.py --gpu A100-80GB --seq 4096 --batch 2

Pure arithmetic (trainer/kubetune_trainer/planner.py), no GPU and no weights: memory per GPU, and
GPU-hours for 1,000 rows of a mean 400 tokens, packed at --seq, 3 epochs, on the GPU type given.
The published configs' shapes are written out here, as in tests/unit/test_planner.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "api"), str(ROOT / "trainer")]

from kubetune_api.gpus import GIB, GPU_TYPES, usable_bytes  # noqa: E402
from kubetune_api.protocol import DataStats, StepPlan  # noqa: E402
from kubetune_api.spec import LoRASpec, Quantization, TrainingSpec  # noqa: E402
from kubetune_trainer import planner  # noqa: E402

SHAPES: dict[str, dict[str, Any]] = {
    "Llama-3.2-1B": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256,
                     "tie_word_embeddings": True},
    "Llama-3.1-8B": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                     "tie_word_embeddings": False},
    "Llama-3.1-70B": {"hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
                      "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256,
                      "tie_word_embeddings": False},
}  # fmt: skip
ROWS, MEAN_ROW_TOKENS, EPOCHS = 1000, 400.0, 3


def stats(seq: int, rows: int = ROWS, mean: float = MEAN_ROW_TOKENS) -> DataStats:
    """What preflight would report for `rows` chat rows of `mean` tokens, packed at `seq`
    (also the data of tests/unit/test_planner.py)."""
    tokens = int(rows * mean)
    sequences = -(-tokens // seq)
    return DataStats(
        format="chat",
        train_rows=rows,
        validation_rows=rows // 10,
        train_tokens=tokens,
        trainable_tokens=tokens // 2,
        validation_tokens=tokens // 10,
        truncated_rows=0,
        dropped_rows=0,
        max_row_tokens=seq,
        mean_row_tokens=mean,
        train_sequences=sequences,
        packing_efficiency=tokens / (sequences * seq),
    )


def rows(gpu_name: str, seq: int, batch: int, checkpointing: bool) -> list[str]:
    gpu = GPU_TYPES[gpu_name]
    usable = usable_bytes(gpu.memory_bytes)
    training = TrainingSpec(max_seq_length=seq, batch_size=batch, gradient_checkpointing=checkpointing, epochs=EPOCHS)
    data = stats(seq)
    out = []
    for name, shape in SHAPES.items():
        for method, quantization, gpus, sharded in (
            ("bf16 LoRA", Quantization.NONE, 1, False),
            ("QLoRA 4-bit", Quantization.FOUR_BIT, 1, False),
            ("QLoRA 8-bit", Quantization.EIGHT_BIT, 1, False),
            ("FSDP ×8", Quantization.NONE, 8, True),
        ):
            variant = planner.Variant(quantization, sharded, gpus, batch, checkpointing)
            memory = planner.variant_memory(shape, training, LoRASpec(r=16), variant)
            steps_per_epoch = -(-data.train_sequences // (batch * gpus))
            steps = StepPlan(
                epochs=EPOCHS,
                batch_size=batch,
                gradient_accumulation_steps=1,
                steps_per_epoch=steps_per_epoch,
                total_steps=EPOCHS * steps_per_epoch,
                warmup_steps=0,
            )
            tokens = planner.fed_tokens(training, steps, data)
            flops = tokens * planner.flops_per_token(shape, data, checkpointing)
            hours = flops / (gpu.peak_bf16_flops * planner.mfu(gpu, variant)) / 3600
            fits = "yes" if memory <= usable else "no"
            out.append(f"| {name} | {method} | {memory / GIB:.1f} | {fits} | {hours:.2f} | {hours / gpus:.2f} |")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", choices=sorted(GPU_TYPES), default="H100-80GB")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=1, help="sequences per GPU per micro-step")
    parser.add_argument("--no-checkpointing", action="store_true")
    args = parser.parse_args(argv)
    checkpointing = not args.no_checkpointing
    print(
        f"{args.gpu}, seq {args.seq}, micro-batch {args.batch}, gradient checkpointing "
        f"{'on' if checkpointing else 'off'}, LoRA r=16 all-linear; {ROWS} rows x {MEAN_ROW_TOKENS:.0f} tokens, "
        f"{EPOCHS} epochs\n"
    )
    print("| model | method | memory per GPU (GiB) | fits | GPU-hours | wall hours |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows(args.gpu, args.seq, args.batch, checkpointing)))


if __name__ == "__main__":
    main()
