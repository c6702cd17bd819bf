"""Training throughput: kubetune's trainer against a plain transformers `Trainer` + PEFT LoRA.

    python bench/train_throughput.py                      # chat rows of 20..1500 tokens, quickstart-sized Llama, CPU
    python bench/train_throughput.py --dataset numbers    # the quickstart's uniform ~12-token rows, seq 128
    python bench/train_throughput.py --profile 5          # torch.profiler breakdown of 5 steps per side
    python bench/train_throughput.py --device cuda --shape llama-1b --seq 2048   # GPU: tokens/s, MFU, peak memory

Both sides train the same LoRA (same r, alpha, targets, dropout, seed) on the same base model,
on the same train rows tokenized by `kubetune_trainer.encode.Encoder` (completion-only labels),
with the same learning rate, schedule, number of epochs and number of rows per optimizer step:

    kubetune  `recipe.run_training` with a TrainerConfig built here: packing on, exact match off,
              no intermediate checkpoints, as many packs per forward pass as `batchSize: auto`
              picks on the device, accumulated up to --batch-size packs per optimizer step.
              Loop time runs from the start of the first optimizer step to the end of the last
              one (from the `on_step` callback; the final checkpoint save after the loop is left
              out, like the baseline's save_strategy="no").
    baseline  `transformers.Trainer` as a user runs it: random sampler, default dataloader,
              `DataCollatorForSeq2Seq` padding to the longest row of each batch, the default
              per_device_train_batch_size=8 with gradient accumulation up to kubetune's rows per
              step, report_to none, no eval, no saving. Loop time is on_train_begin .. on_train_end.
    baseline-default (--sides)  the Trainer with 8 rows per optimizer step and no accumulation.

Throughput is NON-PADDING tokens per second of training-loop time: model loading, data
preparation, evaluation and export are outside both clocks. Runs alternate order on every
repeat and the table reports medians.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib
import itertools
import json
import logging
import math
import os
import random
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart"
# Runs from a checkout without `pip install -e .` too (as pytest does via pythonpath).
sys.path[:0] = [str(ROOT / d) for d in ("api", "trainer") if str(ROOT / d) not in sys.path]

from kubetune_api.spec import DatasetSpec, LoRASpec, Precision, TrainingSpec  # noqa: E402
from kubetune_api.trainer_config import TrainerConfig  # noqa: E402
from kubetune_trainer import modeling  # noqa: E402
from kubetune_trainer.checkpoint import TrainState  # noqa: E402
from kubetune_trainer.encode import IGNORE_INDEX, Encoder  # noqa: E402
from kubetune_trainer.evaluate import eval_loss  # noqa: E402
from kubetune_trainer.packing import TrainSequence, batch_order  # noqa: E402
from kubetune_trainer.prepare import PreparedData, plan_steps, prepare, resolve_batch_size  # noqa: E402
from kubetune_trainer.recipe import run_training  # noqa: E402

# Peak dense bf16 tensor-core FLOP/s (no sparsity), by substring of torch.cuda.get_device_name().
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


@dataclass(frozen=True)
class Setup:
    """Everything both trainers share: hyper-parameters mirror examples/quickstart/finetunejob.yaml."""

    model: str
    dataset: str
    seq_len: int
    epochs: int
    batch_size: int  # kubetune: packed sequences per optimizer step
    baseline_micro_batch: int  # HF Trainer rows per forward pass (0: the whole optimizer step at once)
    baseline_sampler: str = "random"  # TrainingArguments.train_sampling_strategy
    learning_rate: float = 3e-3
    lora_r: int = 16
    lora_alpha: float = 32.0
    warmup_ratio: float = 0.05
    validation_split: float = 0.2
    seed: int = 42
    device: str = "auto"
    profile_steps: int = 0  # > 0: torch.profiler over that many steps after `profile_after` warm-up steps
    profile_after: int = 10
    micro_batch: int = 0  # kubetune: packed sequences per forward pass (0: batch_size), accumulating up to batch_size

    @property
    def kubetune_micro_batch(self) -> int:
        return self.micro_batch or self.batch_size


@dataclass
class SharedData:
    train: list[TrainSequence]  # unpacked: one per row, labels already masked to completions
    validation: list[TrainSequence]  # packed, exactly what kubetune evaluates on
    pad_id: int
    tokenizer: Any
    rows_per_step: int  # rows kubetune sees per optimizer step (packed sequences x rows each)
    steps_per_epoch: int
    packed_lengths: list[int]  # kubetune's packed training sequences


@dataclass
class Result:
    name: str
    loop_seconds: float
    tokens: int  # non-padding tokens processed in the loop
    padded_tokens: int  # tokens including padding, as fed to the model
    steps: int
    rows_per_step: float
    batch_shape: str
    first_epoch_loss: float
    last_epoch_loss: float
    eval_loss: float | None
    step_seconds: list[float] = field(default_factory=list)  # end of step i-1 (or loop start) to end of step i
    others_cpu: float | None = None  # CPUs kept busy by other processes during the run, on average
    peak_memory_bytes: int | None = None  # CUDA only: torch.cuda.max_memory_allocated() over the run
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.loop_seconds if self.loop_seconds > 0 else float("nan")

    @property
    def median_step_tokens_per_second(self) -> float:
        """Robust to bursts of CPU contention: mean tokens per step over the median step interval."""
        return self.tokens / self.steps / statistics.median(self.step_seconds) if self.step_seconds else float("nan")


def _intervals(start: float, ends: Sequence[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise([start, *ends])]


PROFILE_AFTER = 10  # warm-up steps before --profile starts, fewer when a run has fewer steps


class StepProfiler:
    """torch.profiler over optimizer steps after+1 .. after+n, driven by step callbacks."""

    def __init__(self, name: str, steps: int, after: int = PROFILE_AFTER) -> None:
        self.name, self.steps, self.after = name, steps, after
        self.prof: torch.profiler.profile | None = None
        self.started = 0.0

    def after_step(self, step: int) -> None:
        if self.steps <= 0:
            return
        if step == self.after:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.prof = torch.profiler.profile(activities=activities)
            self.prof.start()
            self.started = time.perf_counter()
        elif step == self.after + self.steps and self.prof is not None:
            _sync()
            wall = time.perf_counter() - self.started
            self.prof.stop()
            self.report(self.prof, wall)
            self.prof = None

    def report(self, prof: torch.profiler.profile, wall: float) -> None:
        events = prof.key_averages()
        in_ops = sum(e.self_cpu_time_total for e in events) / 1e6
        groups = {
            "matmul (mm/addmm/bmm)": ("aten::mm", "aten::addmm", "aten::bmm"),
            "attention (sdpa)": ("aten::_scaled_dot_product", "aten::_flash_attention", "aten::_efficient_attention"),
            "optimizer": ("Optimizer.", "aten::_foreach", "aten::_fused_adam"),
            "copies/casts": ("aten::copy_", "aten::to", "aten::_to_copy", "aten::contiguous", "aten::clone"),
        }
        print(f"\n[profile {self.name}] {self.steps} steps in {wall:.2f}s ({wall / self.steps * 1e3:.1f} ms/step)")
        for label, prefixes in groups.items():
            seconds = sum(e.self_cpu_time_total for e in events if e.key.startswith(prefixes)) / 1e6
            print(f"  {label:24s} {seconds / self.steps * 1e3:8.1f} ms/step  {seconds / wall:6.1%}")
        outside = max(0.0, wall - in_ops)
        print(f"  {'all torch ops':24s} {in_ops / self.steps * 1e3:8.1f} ms/step  {in_ops / wall:6.1%}")
        print(f"  {'outside torch ops':24s} {outside / self.steps * 1e3:8.1f} ms/step  {outside / wall:6.1%}")
        print(events.table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=48))


# -- model ---------------------------------------------------------------------------------------


def _quickstart_builder() -> Any:
    if str(QUICKSTART) not in sys.path:
        sys.path.insert(0, str(QUICKSTART))
    return importlib.import_module("build_base_model")


# Llama shapes. quickstart: examples/quickstart/build_base_model.build() (vocabulary = the tokenizer's);
# llama-1b: Llama-3.2-1B (vocabulary 128256 whatever the tokenizer, tied embeddings, rope theta 500k).
SHAPES: dict[str, dict[str, Any]] = {
    "quickstart": {
        "hidden_size": 128,
        "intermediate_size": 512,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
    },
    "llama-1b": {
        "vocab_size": 128256,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 131072,
        "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
    },
}


def data_tokenizer(data_path: Path) -> Any:
    """The quickstart's BPE trained on the data's own text (prompt + completion, or chat contents)."""
    texts = []
    for line in data_path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            parts = [m.get("content", "") for m in row["messages"]] if "messages" in row else list(row.values())
            texts.append(("" if "prompt" in row else " ").join(str(part) for part in parts))
    return _quickstart_builder().build_tokenizer(texts)


def build_model(shape: str, out: Path, tokenizer: Any, seq_len: int) -> Path:
    """A Llama of `shape` with random weights (seed 0) and `tokenizer`, saved with save_pretrained.
    With the quickstart shape and the quickstart data this is exactly build_base_model.build()."""
    from transformers import LlamaConfig, LlamaForCausalLM

    dims = dict(SHAPES[shape])
    dims["max_position_embeddings"] = max(dims["max_position_embeddings"], seq_len)
    dims.setdefault("vocab_size", len(tokenizer))
    config = LlamaConfig(
        **dims,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    large = shape != "quickstart"
    with torch.device("cuda" if large and torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config)
    if large:
        model = model.bfloat16()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    del model
    return out


def matmul_params(config: Any) -> int:
    """Parameters that take part in a matmul per token: attention + MLP projections and the LM head
    (counted even when tied to the embedding, whose lookup itself costs no FLOPs)."""
    d, layers, inter, vocab = config.hidden_size, config.num_hidden_layers, config.intermediate_size, config.vocab_size
    head_dim = getattr(config, "head_dim", None) or d // config.num_attention_heads
    q_o = 2 * d * config.num_attention_heads * head_dim
    k_v = 2 * d * config.num_key_value_heads * head_dim
    return int(layers * (q_o + k_v + 3 * d * inter) + vocab * d)


def mfu(tokens_per_second: float, n_params: int, peak: float) -> float:
    """The usual 6·N·tokens/s convention (forward 2N + backward 4N), over the device's bf16 peak. LoRA skips
    the frozen weights' gradients (≈ 4·N of real work), so 6·N overstates the FLOPs done by about 1.5x; it is
    the number other trainers publish, so it is the one comparable with them."""
    return tokens_per_second * 6 * n_params / peak


def peak_flops() -> tuple[str, float] | None:
    """(device name, dense bf16 peak FLOP/s) when on CUDA and the device is known."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next(((name, value) for key, value in PEAK_BF16_FLOPS.items() if key in name), None)


# -- data ----------------------------------------------------------------------------------------


def _training_spec(setup: Setup, packing: bool) -> TrainingSpec:
    return TrainingSpec(
        epochs=setup.epochs,
        learning_rate=setup.learning_rate,
        batch_size=setup.kubetune_micro_batch,
        gradient_accumulation_steps=setup.batch_size // setup.kubetune_micro_batch,
        max_seq_length=setup.seq_len,
        packing=packing,
        warmup_ratio=setup.warmup_ratio,
        gradient_checkpointing=False,
        checkpoint_every_steps=10_000_000,
        seed=setup.seed,
    )


def device_type(setup: Setup) -> str:
    return "cuda" if setup.device != "cpu" and torch.cuda.is_available() else "cpu"


def prepare_shared(setup: Setup, model_dir: Path, data_path: Path) -> SharedData:
    """The same rows, split and Encoder tokens kubetune uses; kubetune's own prepare() does the work."""
    tokenizer = modeling.load_tokenizer(model_dir)
    dataset = DatasetSpec(train=str(data_path), validation_split=setup.validation_split)
    results: dict[bool, PreparedData] = {}
    for packing in (False, True):
        encoder = Encoder(tokenizer, setup.seq_len, completion_only_loss=True)
        results[packing] = prepare(dataset, _training_spec(setup, packing), encoder, data_path, None)
    packed = results[True]
    steps = plan_steps(_training_spec(setup, True), packed.stats, device_type(setup))
    return SharedData(
        train=results[False].train,
        validation=packed.validation,
        pad_id=int(tokenizer.pad_token_id),
        tokenizer=tokenizer,
        rows_per_step=math.ceil(packed.stats.train_rows / steps.steps_per_epoch),
        steps_per_epoch=steps.steps_per_epoch,
        packed_lengths=[len(s) for s in packed.train],
    )


def auto_micro_batch(setup: Setup) -> int:
    """kubetune's packed sequences per forward pass as `batchSize: auto` picks them on this device
    (a token budget per micro-step), made a divisor of --batch-size so a step holds the same rows."""
    spec = TrainingSpec(batch_size="auto", packing=True, max_seq_length=setup.seq_len)
    micro = max(1, min(setup.batch_size, resolve_batch_size(spec, device_type(setup), float(setup.seq_len))))
    while setup.batch_size % micro:
        micro -= 1
    return micro


def kubetune_batch_shape(setup: Setup) -> str:
    micro, accumulation = setup.kubetune_micro_batch, setup.batch_size // setup.kubetune_micro_batch
    return f"{micro}x{setup.seq_len} packed" + (f" x{accumulation} accum" if accumulation > 1 else "")


def kubetune_fed_tokens(setup: Setup, shared: SharedData) -> int:
    """Tokens kubetune's loop feeds the model, padding included: its own batch order and collation
    (right-padding to the longest packed sequence of each micro-batch, a multiple of 8 on CUDA)."""
    multiple = 8 if device_type(setup) == "cuda" else 1
    fed = 0
    for epoch in range(setup.epochs):
        for batch in batch_order(len(shared.packed_lengths), setup.kubetune_micro_batch, setup.seed, epoch):
            longest = max(shared.packed_lengths[i] for i in batch)
            fed += len(batch) * -(-longest // multiple) * multiple
    return fed


def mixed_lengths(source: Path, most: int, out: Path, seed: int = 0) -> Path:
    """Rows of very different lengths from completion rows: each joins 1..`most` consecutive rows
    ("a =>", " 1") + ("b =>", " 2") -> ("a; b =>", " 1 2"). Shows what padding costs on skewed data."""
    rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    rng = random.Random(seed)
    mixed, i = [], 0
    while i < len(rows):
        group = rows[i : i + rng.randint(1, most)]
        i += len(group)
        prompt = "; ".join(str(r["prompt"]).removesuffix(" =>") for r in group) + " =>"
        mixed.append({"prompt": prompt, "completion": "".join(str(r["completion"]) for r in group)})
    out.write_text("".join(json.dumps(r) + "\n" for r in mixed))
    return out


CHAT_SYSTEM = "Write each number in digits, in order."
CHAT_SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>")  # kubetune's fallback template (ChatML) markers


def number_words(n: int) -> str:
    """0..999 in words, exactly as the quickstart data writes them ("eight hundred and seventy-eight")."""
    if str(QUICKSTART) not in sys.path:
        sys.path.insert(0, str(QUICKSTART))
    words: str = importlib.import_module("make_dataset").in_words(n)
    return words


def chat_tokenizer() -> Any:
    """The quickstart's BPE, trained on every number 0..999 in words and digits (a fixed corpus, so
    it does not depend on the rows), with ChatML's markers as special tokens as chat models have."""
    corpus = [f"{number_words(n)}; {n}" for n in range(1000)] + [CHAT_SYSTEM]
    tokenizer = _quickstart_builder().build_tokenizer(corpus)
    tokenizer.add_tokens(list(CHAT_SPECIAL_TOKENS), special_tokens=True)
    return tokenizer


@dataclass(frozen=True)
class ChatLengths:
    """Token lengths (rendered with the fallback ChatML template) drawn from a lognormal, clipped."""

    median: float = 260.0
    sigma: float = 1.0
    shortest: int = 20
    longest: int = 1500


def chat_rows(tokenizer: Any, n: int, seed: int = 0, lengths: ChatLengths = ChatLengths()) -> list[dict[str, Any]]:
    """Deterministic chat rows of long-tailed length: a user lists numbers in words, the assistant
    answers in digits (learnable, so losses show both trainers learn). Half have a system message;
    longer rows have more turns (1 turn per ~300 tokens, at most 4). Lengths are hit within a few
    tokens using each number's measured token cost, and the bench prints the real distribution."""
    rng = random.Random(seed)

    def cost(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    # Token costs of one number in the user turn ("...; seven") and in the answer (" 7").
    per_number = statistics.fmean(cost(f"; {number_words(k)}") + cost(f" {k}") for k in range(0, 1000, 7))
    turn_overhead = cost("<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n<|im_end|></s>\n")
    system_overhead = cost(f"<|im_start|>system\n{CHAT_SYSTEM}<|im_end|>\n")
    rows = []
    for _ in range(n):
        target = round(rng.lognormvariate(math.log(lengths.median), lengths.sigma))
        target = min(lengths.longest, max(lengths.shortest, target))
        messages: list[dict[str, str]] = []
        budget = float(target)
        if rng.random() < 0.5:
            messages.append({"role": "system", "content": CHAT_SYSTEM})
            budget -= system_overhead
        turns = min(4, 1 + target // 300)
        budget -= turns * turn_overhead
        numbers = max(turns, round(budget / per_number))
        cuts = sorted(rng.sample(range(1, numbers), turns - 1)) if turns > 1 else []
        for count in (b - a for a, b in itertools.pairwise([0, *cuts, numbers])):
            values = [rng.randrange(1000) for _ in range(count)]
            messages.append({"role": "user", "content": "; ".join(number_words(v) for v in values)})
            messages.append({"role": "assistant", "content": " ".join(str(v) for v in values)})
        rows.append({"messages": messages})
    return rows


def write_chat_data(tokenizer: Any, n: int, out: Path, seed: int = 0) -> Path:
    out.write_text("".join(json.dumps(row) + "\n" for row in chat_rows(tokenizer, n, seed)))
    return out


def length_summary(lengths: Sequence[int]) -> str:
    ordered = sorted(lengths)

    def at(q: float) -> int:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return (
        f"min {ordered[0]}, p10 {at(0.1)}, median {at(0.5)}, mean {statistics.fmean(ordered):.0f}, "
        f"p90 {at(0.9)}, p99 {at(0.99)}, max {ordered[-1]}"
    )


# -- kubetune ------------------------------------------------------------------------------------


def run_kubetune(setup: Setup, model_dir: Path, data_path: Path, work: Path, shared: SharedData) -> Result:
    config = TrainerConfig.model_validate(
        {
            "job_name": "bench-kubetune",
            "base_model_uri": str(model_dir),
            "dataset": {"train": str(data_path), "format": "auto", "validation_split": setup.validation_split},
            "lora": LoRASpec(r=setup.lora_r, alpha=setup.lora_alpha, dropout=0.0).model_dump(),
            "training": _training_spec(setup, packing=True).model_dump(),
            "evaluation": {"exact_match": False},
            "storage": {},
            "output": {"uri": str(work / "out")},  # fresh per run: a finished output is never re-trained
            "runtime": {"cache_dir": str(work / "cache"), "work_dir": str(work), "device": setup.device},
        }
    )
    marks: list[tuple[float, int, float, int, float]] = []  # (clock, step, step seconds so far, tokens, loss)

    profiler = StepProfiler("kubetune", setup.profile_steps, setup.profile_after)

    def on_step(state: TrainState, metrics: dict[str, float]) -> None:
        marks.append((time.perf_counter(), state.step, state.elapsed_seconds, state.trained_tokens, metrics["loss"]))
        profiler.after_step(state.step)

    summary = run_training(config, on_step=on_step, on_event=lambda message: None)
    if summary.status != "Succeeded" or not marks:
        raise RuntimeError(f"kubetune run failed: {summary.to_wire_json()}")
    # The first step started `elapsed` seconds before its callback (the reporter update in between is µs).
    loop_start = marks[0][0] - marks[0][2]
    loop_seconds = marks[-1][0] - loop_start
    losses = [m[4] for m in marks]
    manifest = json.loads((work / "out" / "manifest.json").read_text())
    timings = manifest["timingsSeconds"]
    spe = shared.steps_per_epoch
    return Result(
        name="kubetune",
        loop_seconds=loop_seconds,
        tokens=summary.trained_tokens,
        padded_tokens=kubetune_fed_tokens(setup, shared),
        steps=summary.step,
        rows_per_step=len(shared.train) * setup.epochs / summary.step,
        batch_shape=kubetune_batch_shape(setup),
        first_epoch_loss=statistics.fmean(losses[:spe]),
        last_epoch_loss=statistics.fmean(losses[-spe:]),
        eval_loss=summary.eval.finetuned.loss if summary.eval and summary.eval.finetuned else None,
        step_seconds=_intervals(loop_start, [m[0] for m in marks]),
        extra={
            "step_compute_s": marks[-1][2],  # sum of _one_step times only
            "train_stage_s": float(timings["Training"]),  # includes the final checkpoint save
        },
    )


# -- baseline ------------------------------------------------------------------------------------


class CountingCollator:
    """Wraps the default collator to count what the model is fed; one tensor sum per batch."""

    def __init__(self, inner: Callable[[list[dict[str, Any]]], Any]) -> None:
        self.inner = inner
        self.real_tokens = 0
        self.padded_tokens = 0
        self.max_len = 0

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        batch = self.inner(features)
        mask = batch["attention_mask"]
        self.real_tokens += int(mask.sum())
        self.padded_tokens += mask.numel()
        self.max_len = max(self.max_len, int(mask.shape[1]))
        return batch


TRAINER_DEFAULT_BATCH = 8  # TrainingArguments.per_device_train_batch_size's default


def run_baseline(
    setup: Setup,
    model_dir: Path,
    work: Path,
    shared: SharedData,
    batch_rows: int,
    accumulation: int = 1,
    name: str = "baseline",
) -> Result:
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class LoopClock(TrainerCallback):
        def __init__(self) -> None:
            self.begin = self.end = 0.0
            self.step_ends: list[float] = []

        def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
            _sync()
            self.begin = time.perf_counter()

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            _sync()
            self.step_ends.append(time.perf_counter())
            profiler.after_step(len(self.step_ends))

        def on_train_end(self, *args: Any, **kwargs: Any) -> None:
            _sync()
            self.end = time.perf_counter()

    profiler = StepProfiler(name, setup.profile_steps, setup.profile_after)
    cuda = device_type(setup) == "cuda"
    numerics = modeling.choose_numerics(Precision.AUTO, "cuda" if cuda else "cpu")
    set_seed(setup.seed)
    base = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=numerics.load_dtype, attn_implementation=numerics.attn_implementation
    )
    base.config.use_cache = False  # standard for training; transformers would otherwise build a KV cache
    lora = LoraConfig(
        r=setup.lora_r,
        lora_alpha=setup.lora_alpha,  # type: ignore[arg-type]
        lora_dropout=0.0,
        target_modules="all-linear",
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, lora)
    rows = [{"input_ids": s.input_ids, "attention_mask": [1] * len(s), "labels": s.labels} for s in shared.train]
    collator = CountingCollator(
        DataCollatorForSeq2Seq(shared.tokenizer, padding="longest", label_pad_token_id=IGNORE_INDEX)
    )
    args = TrainingArguments(
        output_dir=str(work / "hf"),
        per_device_train_batch_size=batch_rows,
        gradient_accumulation_steps=accumulation,
        train_sampling_strategy=setup.baseline_sampler,
        num_train_epochs=setup.epochs,
        learning_rate=setup.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=setup.warmup_ratio,
        logging_steps=math.ceil(len(shared.train) / (batch_rows * accumulation)),  # one loss per epoch: its mean
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        use_cpu=not cuda,
        bf16=numerics.mixed_precision == "bf16",
        seed=setup.seed,
        disable_tqdm=True,
    )
    clock = LoopClock()
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collator, callbacks=[clock])
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    output = trainer.train()
    losses = [float(e["loss"]) for e in trainer.state.log_history if "loss" in e]
    device = next(model.parameters()).device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=numerics.mixed_precision == "bf16"):
        evaluated = eval_loss(model, shared.validation, 8, shared.pad_id, device).summary() if shared.validation else {}
    return Result(
        name=name,
        loop_seconds=clock.end - clock.begin,
        tokens=collator.real_tokens,
        padded_tokens=collator.padded_tokens,
        steps=output.global_step,
        rows_per_step=len(rows) * setup.epochs / output.global_step,
        batch_shape=f"{batch_rows}x<={collator.max_len} padded"
        + (f" x{accumulation} accum" if accumulation > 1 else ""),
        first_epoch_loss=losses[0] if losses else float("nan"),
        last_epoch_loss=losses[-1] if losses else float("nan"),
        eval_loss=evaluated.get("loss"),
        step_seconds=_intervals(clock.begin, clock.step_ends),
    )


class ContentionMeter:
    """CPU time other processes used while it runs (Linux): all busy time in /proc/stat minus our own."""

    def __init__(self) -> None:
        self.start = (time.perf_counter(), _busy_seconds(), time.process_time())

    def stop(self) -> float | None:
        wall0, busy0, own0 = self.start
        busy = _busy_seconds()
        if busy is None or busy0 is None:
            return None
        wall = time.perf_counter() - wall0
        others = (busy - busy0) - (time.process_time() - own0)
        return max(0.0, others / wall) if wall > 0 else None


def _busy_seconds() -> float | None:
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# -- report --------------------------------------------------------------------------------------


def _median(results: Sequence[Result], key: Callable[[Result], float]) -> float:
    return statistics.median(key(r) for r in results)


def _tps(r: Result) -> float:
    return r.tokens_per_second


def _robust_tps(r: Result) -> float:
    return r.median_step_tokens_per_second


HEADERS = {
    "kubetune": "kubetune",
    "baseline": "HF Trainer, same rows/step",
    "baseline-default": f"HF Trainer, default batch {TRAINER_DEFAULT_BATCH}",
}


def report(setup: Setup, runs: dict[str, list[Result]], shared: SharedData, model_config: Any) -> dict[str, Any]:
    """Print the side-by-side table and ratios; return the headline numbers (--json, bench/gpu_report.py)."""
    peak = peak_flops()
    n_params = matmul_params(model_config)
    cuda = device_type(setup) == "cuda"

    def cells(results: list[Result]) -> list[str]:
        r = results[-1]
        tps = _median(results, _tps)
        out = [
            r.batch_shape,
            f"{r.rows_per_step:.1f}",
            str(r.steps),
            f"{r.tokens:,}",
            f"{r.padded_tokens:,}",
            f"{r.tokens / r.padded_tokens:.1%}",
            f"{_median(results, lambda x: x.loop_seconds):.2f}",
            f"{tps:,.0f}",
            " ".join(f"{_tps(x):,.0f}" for x in results),
            f"{_median(results, _robust_tps):,.0f}",
            f"{statistics.median(x.first_epoch_loss for x in results):.4f}",
            f"{statistics.median(x.last_epoch_loss for x in results):.4f}",
            "-" if r.eval_loss is None else f"{statistics.median(x.eval_loss or 0.0 for x in results):.4f}",
        ]
        if cuda:
            out.append("-" if peak is None else f"{mfu(tps, n_params, peak[1]):.1%}")
            out.append(f"{max(x.peak_memory_bytes or 0 for x in results) / 2**30:.1f}")
        return out

    labels = [
        "batch per step",
        "rows per step",
        "optimizer steps",
        "non-padding tokens",
        "fed tokens (incl. pad)",
        "token efficiency",
        "loop seconds (median)",
        "tokens/s (median)",
        "tokens/s (each run)",
        "tokens/s at median step",
        "train loss, 1st epoch",
        "train loss, last epoch",
        "eval loss after",
        *(["MFU (6·N·tokens/s / peak)", "peak memory GiB (allocated)"] if cuda else []),
    ]
    names = [name for name in HEADERS if runs.get(name)]
    columns = [cells(runs[name]) for name in names]
    width = max(len(label) for label in labels)
    col = max(24, *(len(c) for column in columns for c in column))
    repeats = max(len(runs[name]) for name in names)
    print()
    print(
        f"model={setup.model} data={setup.dataset} seq_len={setup.seq_len} epochs={setup.epochs} "
        f"kubetune batch={setup.batch_size} ({kubetune_batch_shape(setup)}) lr={setup.learning_rate} "
        f"LoRA r={setup.lora_r} alpha={setup.lora_alpha} "
        f"all-linear, device={device_type(setup)} threads={torch.get_num_threads()}, repeats={repeats}"
    )
    print(f"{'':{width}}  " + "  ".join(f"{HEADERS[name]:>{col}}" for name in names))
    for label, *row in zip(labels, *columns, strict=True):
        print(f"{label:{width}}  " + "  ".join(f"{c:>{col}}" for c in row))
    print()
    kt = runs.get("kubetune", [])
    for name, title in (
        ("baseline", "same rows per optimizer step (isolates packing vs padding)"),
        ("baseline-default", f"Trainer defaults (per_device_train_batch_size={TRAINER_DEFAULT_BATCH})"),
    ):
        other = runs.get(name, [])
        if not kt or not other:
            continue
        ratio = _median(kt, _tps) / _median(other, _tps)
        per_run = ", ".join(f"{_tps(k) / _tps(h):.2f}" for k, h in zip(kt, other, strict=False))
        robust = _median(kt, _robust_tps) / _median(other, _robust_tps)
        print(f"ratio kubetune/baseline, {title}:")
        print(f"    {ratio:.2f}x median tokens/s (per repeat: {per_run}); {robust:.2f}x at the median step")
        if cuda:
            mem = max(r.peak_memory_bytes or 0 for r in kt) / max(1, max(r.peak_memory_bytes or 0 for r in other))
            print(f"    {mem:.2f}x peak memory")
    if setup.profile_steps:
        print("note: --profile ran torch.profiler inside both loops; these throughput numbers are not comparable")
    busiest = max((r.others_cpu or 0.0) for results in runs.values() for r in results)
    if busiest > 0.1:
        print(
            f"warning: other processes kept {busiest:.2f} of {os.cpu_count()} CPUs busy during a run: "
            "wall-clock numbers are noisy; compare the median-step row, or rerun on a quiet machine"
        )
    if kt:
        step_compute = statistics.median(r.extra["step_compute_s"] for r in kt)
        stage = statistics.median(r.extra["train_stage_s"] for r in kt)
        print(
            f"kubetune: sum of step times {step_compute:.2f}s, loop {_median(kt, lambda r: r.loop_seconds):.2f}s, "
            f"Training stage incl. final checkpoint {stage:.2f}s (medians)"
        )
    summary: dict[str, Any] = {
        "model": setup.model,
        "seq_len": setup.seq_len,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "peak_tflops": None if peak is None else peak[1] / 1e12,
        "sides": {
            name: {
                "tokens_per_second": round(_median(results, _tps), 1),
                "token_efficiency": round(results[-1].tokens / results[-1].padded_tokens, 4),
                "mfu": None if not cuda or peak is None else round(mfu(_median(results, _tps), n_params, peak[1]), 4),
                "peak_memory_gib": round(max(x.peak_memory_bytes or 0 for x in results) / 2**30, 2) if cuda else None,
            }
            for name, results in runs.items()
            if results
        },
    }
    if kt and runs.get("baseline"):
        summary["ratio_vs_baseline"] = round(_median(kt, _tps) / _median(runs["baseline"], _tps), 3)
    if not cuda:
        print(f"MFU: not on CUDA; N = {n_params / 1e9:.3g}B matmul parameters, 6·N = {6 * n_params:.3g} FLOPs/token")
    elif peak is None:
        print(f"MFU: unknown bf16 peak for {torch.cuda.get_device_name()!r}; add it to PEAK_BF16_FLOPS")
    else:
        print(
            f"MFU = 6·N·tokens/s / peak, N = {n_params / 1e9:.3g}B matmul parameters (LM head included), "
            f"peak = {peak[1] / 1e12:.0f} TFLOPS dense bf16 assumed for {peak[0]!r}"
        )
    return summary


# -- main ----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", "--model", dest="shape", choices=sorted(SHAPES), default="quickstart")
    parser.add_argument(
        "--dataset",
        choices=["chat", "numbers"],
        default="chat",
        help="chat: generated chat rows of long-tailed length (20..1500 tokens); numbers: examples/quickstart",
    )
    parser.add_argument(
        "--rows", type=int, default=None, help="chat rows to generate, before the 80/20 split (300; llama-1b 2000)"
    )
    parser.add_argument("--data", type=Path, default=None, help="train on this JSONL instead (chat or completion)")
    parser.add_argument(
        "--mix",
        type=int,
        default=1,
        metavar="K",
        help="K > 1: train on rows that each join 1..K completion rows (skewed lengths, where padding hurts)",
    )
    parser.add_argument(
        "--limit", type=int, default=0, metavar="N", help="use only the first N data rows (smoke tests)"
    )
    parser.add_argument("--seq", "--seq-len", dest="seq_len", type=int, default=None, help="maxSeqLength (pack length)")
    parser.add_argument("--epochs", type=int, default=None, help="default: 1 for chat, 12 for numbers")
    parser.add_argument("--batch-size", type=int, default=8, help="kubetune packed sequences per optimizer step")
    parser.add_argument(
        "--micro-batch",
        type=int,
        default=None,
        metavar="N",
        help="kubetune packed sequences per forward pass, accumulating up to --batch-size (must divide it). "
        "Default: what batchSize: auto gives on the device (2 at seq 2048 on CPU, all 8 on CUDA)",
    )
    parser.add_argument(
        "--baseline-micro-batch",
        type=int,
        default=TRAINER_DEFAULT_BATCH,
        metavar="N",
        help="HF Trainer rows per forward pass (per_device_train_batch_size), with gradient accumulation up to "
        "kubetune's rows per step; 0: the whole step in one forward pass",
    )
    parser.add_argument(
        "--baseline-sampler",
        choices=["random", "group_by_length"],
        default="random",
        help="the Trainer's train_sampling_strategy; group_by_length batches rows of similar length (less padding)",
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="alternate the order each repeat; report medians (3; llama-1b 2)"
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--json", type=Path, default=None, help="also write the headline numbers here as JSON")
    parser.add_argument(
        "--sides",
        default="kubetune,baseline",
        help="comma-separated, from kubetune, baseline (same rows/step), baseline-default (8 rows/step)",
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help=f"torch.profiler over N steps after {PROFILE_AFTER} warm-up steps (slows those steps down)",
    )
    args = parser.parse_args(argv)
    args.sides = [side.strip() for side in args.sides.split(",") if side.strip()]
    unknown = set(args.sides) - {"kubetune", "baseline", "baseline-default"}
    if unknown or not args.sides:
        parser.error(f"--sides: unknown {sorted(unknown)}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    chat = args.data is None and args.dataset == "chat"
    seq_len = args.seq_len or (128 if args.shape == "quickstart" and args.dataset == "numbers" else 2048)
    setup = Setup(
        model=args.shape,
        dataset="chat" if chat else str(args.data or "numbers"),
        seq_len=seq_len,
        epochs=args.epochs or (1 if chat else 12),
        batch_size=args.batch_size,
        micro_batch=args.micro_batch or 0,
        baseline_micro_batch=args.baseline_micro_batch,
        baseline_sampler=args.baseline_sampler,
        device=args.device,
        profile_steps=args.profile,
    )
    if device_type(setup) == "cpu" and setup.device == "cuda":
        raise SystemExit("--device cuda: no CUDA device")
    if args.micro_batch is None:
        setup = dataclasses.replace(setup, micro_batch=auto_micro_batch(setup))
    elif args.micro_batch < 1 or setup.batch_size % args.micro_batch:
        raise SystemExit(f"--micro-batch {args.micro_batch}: must divide --batch-size {setup.batch_size}")
    repeats = args.repeats or (3 if args.shape == "quickstart" else 2)
    with tempfile.TemporaryDirectory(prefix="kubetune-bench-") as tmp:
        root = Path(tmp)
        if chat:
            tokenizer = chat_tokenizer()
            rows = args.rows or (300 if args.shape == "quickstart" else 2000)
            data_path = write_chat_data(tokenizer, rows, root / "chat.jsonl")
        else:
            data_path = args.data or QUICKSTART / "numbers.jsonl"
            tokenizer = data_tokenizer(data_path)
        if args.limit:
            lines = [line for line in data_path.read_text().splitlines() if line.strip()][: args.limit]
            data_path = root / "limited.jsonl"
            data_path.write_text("\n".join(lines) + "\n")
        if args.mix > 1:
            data_path = mixed_lengths(data_path, args.mix, root / "mixed.jsonl")
        model_dir = build_model(args.shape, root / "model", tokenizer, seq_len)
        from transformers import AutoConfig

        model_config = AutoConfig.from_pretrained(str(model_dir))
        shared = prepare_shared(setup, model_dir, data_path)
        total_steps = shared.steps_per_epoch * setup.epochs
        setup = dataclasses.replace(setup, profile_after=max(1, min(PROFILE_AFTER, total_steps - setup.profile_steps)))
        micro = setup.baseline_micro_batch or shared.rows_per_step
        print(
            f"data: {setup.dataset}, {len(shared.train)} train rows; tokens per row: "
            f"{length_summary([len(s) for s in shared.train])}; {len(shared.validation)} packed validation sequences\n"
            f"kubetune sees {shared.rows_per_step} rows/step ({shared.steps_per_epoch} steps/epoch, "
            f"{kubetune_batch_shape(setup)}), so the baseline uses {shared.rows_per_step} rows/step "
            f"({micro} rows per forward pass x {math.ceil(shared.rows_per_step / micro)} accumulation, "
            f"{setup.baseline_sampler} sampler)",
            flush=True,
        )
        runs: dict[str, list[Result]] = {side: [] for side in args.sides}
        sides = list(args.sides)
        for repeat in range(repeats):
            for name in sides[repeat % len(sides) :] + sides[: repeat % len(sides)]:  # rotate the order
                work = root / f"{name}-{repeat}"
                work.mkdir()
                gc.collect()  # the previous run's model must not linger (GPU memory with llama-1b)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                meter = ContentionMeter()
                if name == "kubetune":
                    result = run_kubetune(setup, model_dir, data_path, work, shared)
                elif name == "baseline-default":
                    result = run_baseline(setup, model_dir, work, shared, TRAINER_DEFAULT_BATCH, 1, name)
                else:
                    accumulation = math.ceil(shared.rows_per_step / micro)
                    result = run_baseline(setup, model_dir, work, shared, micro, accumulation)
                result.others_cpu = meter.stop()
                if torch.cuda.is_available():
                    result.peak_memory_bytes = torch.cuda.max_memory_allocated()
                runs[name].append(result)
                print(
                    f"repeat {repeat + 1}/{repeats} {name:8s}: {result.tokens_per_second:,.0f} tokens/s "
                    f"({result.tokens:,} tokens in {result.loop_seconds:.2f}s; "
                    f"{result.median_step_tokens_per_second:,.0f} at the median step), "
                    f"last-epoch loss {result.last_epoch_loss:.4f}, "
                    f"other processes' CPU use {'?' if result.others_cpu is None else f'{result.others_cpu:.2f}'}",
                    flush=True,
                )
        summary = report(setup, runs, shared, model_config)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
