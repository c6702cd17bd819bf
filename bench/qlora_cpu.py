"""Plain LoRA vs QLoRA (4-bit, 8-bit) vs DoRA vs rsLoRA on CPU: peak memory and seconds per step.

    python bench/qlora_cpu.py                         # hidden 512, 4 layers, 6 steps per variant
    python bench/qlora_cpu.py --hidden 1024 --layers 8 --variants lora,qlora-4bit,qlora-8bit,dora

Each variant trains through `recipe.LoRAFinetuneRecipe`, the path `kubetune run` takes, in its own
subprocess, so its peak RSS (getrusage ru_maxrss) is its own and not the previous variant's. A
random Llama of the given size and the quickstart tokenizer are built once, locally. Reported:

    peak RSS       the whole process (torch, libraries, data, model), MiB: the allocator's
                   high-water mark, mostly transient activations and dequantised weights
    RSS at end     the process after training and malloc_trim, MiB: what is live
    anon at end    its anonymous part (RssAnon). The rest is file pages: an fp32 base on CPU is
                   used straight from the mapped safetensors file, and transformers keeps that
                   file mapped after quantising from it too (reclaimable page cache)
    base weights   bytes of the base model's parameters and buffers as loaded (bitsandbytes'
                   packed 4-bit / int8 storage for QLoRA), MiB; LoRA weights excluded
    s/step         median wall time of an optimizer step, first step (warm-up) left out
    CPU s/step     median CPU time (all threads) of a step: steadier than wall time when other
                   processes share the cores; the "vs lora" ratio uses it
    final loss     the last step's training loss (all variants see the same rows)

On CPU bitsandbytes dequantises each 4-bit/8-bit weight for every matmul, so QLoRA trades speed
for memory here as it does on GPUs; the numbers are a ratio between variants, not a GPU forecast.
The saving that matters is the base weights column (on a GPU it is device memory: see
tests/gpu/test_qlora_cuda.py). On a shared machine pass --threads 1: CPU time per step is then
steady even when the cores are oversubscribed.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import itertools
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart"

VARIANTS: dict[str, dict[str, Any]] = {
    "lora": {},
    "qlora-4bit": {"quantization": "4bit"},
    "qlora-8bit": {"quantization": "8bit"},
    "dora": {"use_dora": True},
    "dora-4bit": {"quantization": "4bit", "use_dora": True},
    "rslora": {"use_rslora": True},
}


def run_variant(model_dir: Path, lora: dict[str, Any], steps: int, work: Path) -> dict[str, Any]:
    """One training run in this process; prints nothing, returns the measurements."""
    from kubetune_api.trainer_config import TrainerConfig
    from kubetune_trainer.progress import ProgressReporter
    from kubetune_trainer.recipe import LoRAFinetuneRecipe

    config = TrainerConfig.model_validate(
        {
            "job_name": "bench-qlora",
            "base_model_uri": str(model_dir),
            "dataset": {"train": str(QUICKSTART / "numbers.jsonl"), "validation_split": 0.0},
            "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": ["all-linear"], **lora},
            "training": {
                "max_steps": steps,
                "batch_size": 2,
                "max_seq_length": 128,
                "learning_rate": 1e-3,
                "gradient_checkpointing": False,
                "checkpoint_every_steps": 10_000,
                "seed": 7,
            },
            "evaluation": {"exact_match": False},
            "output": {"uri": str(work / "out")},
            "storage": {},
            "runtime": {"cache_dir": str(work / "cache"), "device": "cpu"},
        }
    )
    stamps: list[float] = []
    cpu_stamps: list[float] = []
    losses: list[float] = []

    def on_step(state: Any, info: dict[str, float]) -> None:
        stamps.append(time.perf_counter())
        cpu_stamps.append(time.process_time())
        losses.append(info["loss"])

    recipe = LoRAFinetuneRecipe(config, ProgressReporter("bench", None), threading.Event(), work, on_step=on_step)
    started = time.perf_counter()
    recipe.run()
    base = recipe.model.get_base_model()
    lora_bytes = sum(p.numel() * p.element_size() for n, p in base.named_parameters() if "lora_" in n)
    footprint = int(base.get_memory_footprint()) - lora_bytes
    step_times = [b - a for a, b in itertools.pairwise(stamps)]
    cpu_times = [b - a for a, b in itertools.pairwise(cpu_stamps)]
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    # glibc keeps freed heap (the transient dequantised weights, activations) mapped; hand it back
    # first, so "at end" is what is live rather than the allocator's high-water mark.
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return {
        "peak_rss_mib": peak_rss_mib,
        "end_rss_mib": _status_kib("VmRSS") / 1024,
        "end_anon_mib": _status_kib("RssAnon") / 1024,
        "base_weights_mib": footprint / 2**20,
        "seconds_per_step": statistics.median(step_times) if step_times else float("nan"),
        "cpu_seconds_per_step": statistics.median(cpu_times) if cpu_times else float("nan"),
        "final_loss": losses[-1] if losses else float("nan"),
        "wall_seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    parser.add_argument("--threads", type=int, help="torch threads per run (1 gives steadier ratios on a busy machine)")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: run one variant, print JSON
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        with tempfile.TemporaryDirectory(prefix="kubetune-bench-") as work:
            result = run_variant(args.model_dir, VARIANTS[args.child], args.steps, Path(work))
        print("RESULT " + json.dumps(result))
        return

    sys.path.insert(0, str(QUICKSTART))
    build = importlib.import_module("build_base_model").build  # examples/ is not a package

    with tempfile.TemporaryDirectory(prefix="kubetune-bench-model-") as tmp:
        model_dir = build(Path(tmp) / "model", hidden=args.hidden, layers=args.layers)
        threads = f", {args.threads} torch thread(s)" if args.threads else ""
        print(f"model: random Llama, hidden {args.hidden}, {args.layers} layers; {args.steps} steps each, CPU{threads}")
        rows = []
        for name in args.variants.split(","):
            proc = subprocess.run(
                [sys.executable, __file__, "--child", name, "--model-dir", str(model_dir), "--steps", str(args.steps)]
                + (["--threads", str(args.threads)] if args.threads else []),
                capture_output=True,
                text=True,
                check=False,
                env={"PYTHONPATH": f"{ROOT / 'api'}:{ROOT / 'trainer'}", **_inherited_env()},
            )
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                print(f"{name}: failed (exit {proc.returncode})\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append((name, json.loads(lines[-1].removeprefix("RESULT "))))
    if not rows:
        sys.exit(1)
    reference = dict(rows).get("lora", rows[0][1])
    header = (
        f"{'variant':<12} {'peak RSS MiB':>13} {'RSS at end MiB':>15} {'anon at end MiB':>16} {'base weights MiB':>17} "
        f"{'s/step':>8} {'CPU s/step':>11} {'vs lora':>8} {'loss':>7}"
    )
    print(header)
    print("-" * len(header))
    for name, r in rows:
        ratio = r["cpu_seconds_per_step"] / reference["cpu_seconds_per_step"]
        print(
            f"{name:<12} {r['peak_rss_mib']:>13.0f} {r['end_rss_mib']:>15.0f} {r['end_anon_mib']:>16.0f} "
            f"{r['base_weights_mib']:>17.1f} "
            f"{r['seconds_per_step']:>8.3f} {r['cpu_seconds_per_step']:>11.3f} {ratio:>7.2f}x {r['final_loss']:>7.3f}"
        )


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def _inherited_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


if __name__ == "__main__":
    main()
