"""The fit-and-time planner (planner.py): pure arithmetic over config.json shapes, the spec and the
data's token counts. Shapes are the published configs of Llama-3.2-1B, Llama-3.1-8B and Llama-3.1-70B."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from kubetune_api.gpus import GIB, GPU_TYPES, gpu_type_from_node_selector, gpu_type_named, usable_bytes
from kubetune_api.protocol import DataStats, FitPlan, StepPlan
from kubetune_api.spec import LoRASpec, Quantization, Sharding, TrainingSpec
from kubetune_trainer import planner
from kubetune_trainer.memory import estimate_memory

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from plan_table import SHAPES, stats  # the shapes and data bench/plan_table.py tabulates

LLAMA: dict[str, dict[str, Any]] = {
    "1b": SHAPES["Llama-3.2-1B"],
    "8b": SHAPES["Llama-3.1-8B"],
    "70b": SHAPES["Llama-3.1-70B"],
}
H100 = GPU_TYPES["H100-80GB"]


def data(rows: int = 1000, mean: float = 400.0, seq: int = 2048) -> DataStats:
    return stats(seq, rows, mean)


def plan(
    shape: str,
    gpu: str | None = "H100-80GB",
    gpus: int = 1,
    batch: int = 1,
    checkpointing: bool = True,
    quantization: Quantization = Quantization.NONE,
    seq: int = 2048,
    sharding: Sharding = Sharding.AUTO,
) -> FitPlan:
    training = TrainingSpec(
        max_seq_length=seq, batch_size=batch, gradient_checkpointing=checkpointing, epochs=3, sharding=sharding
    )
    lora = LoRASpec(r=16, quantization=quantization)
    stats = data(seq=seq)
    steps_per_epoch = -(-stats.train_sequences // (batch * gpus))
    steps = StepPlan(
        epochs=3,
        batch_size=batch,
        gradient_accumulation_steps=1,
        steps_per_epoch=steps_per_epoch,
        total_steps=3 * steps_per_epoch,
        warmup_steps=0,
    )
    return planner.plan_fit(LLAMA[shape], training, lora, steps, stats, gpus, GPU_TYPES[gpu] if gpu else None)


def test_an_8b_lora_fits_one_h100_with_a_time_estimate() -> None:
    fit = plan("8b")
    assert fit.fits is True and fit.suggestion is None
    assert fit.job.method == "lora" and fit.job.gpus == 1
    assert 16 * GIB < fit.job.memory_bytes < 40 * GIB  # 16 GB of bf16 weights, then the rest
    assert fit.job.gpu_hours is not None and fit.wall_hours == fit.job.gpu_hours
    assert fit.tokens == fit.job.micro_batch * 2048 * 3 * -(-data().train_sequences // 1)


def test_a_70b_lora_does_not_fit_one_h100_and_qlora_is_the_cheapest_change() -> None:
    fit = plan("70b", checkpointing=False, batch=4)
    assert fit.fits is False
    assert fit.suggestion is not None
    assert fit.suggestion.method == "qlora-4bit" and fit.suggestion.gpus == 1
    assert fit.suggestion.memory_bytes <= usable_bytes(H100.memory_bytes)


def test_when_a_smaller_micro_batch_is_enough_it_is_preferred_over_qlora() -> None:
    """Same GPU-hours in the model for a smaller micro-batch; QLoRA is slower, so it loses."""
    fit = plan("8b", gpu="L40S-48GB", batch=16, checkpointing=True)
    assert fit.fits is False and fit.suggestion is not None
    assert fit.suggestion.method == "lora" and fit.suggestion.micro_batch < 16


def test_checkpointing_costs_a_third_more_compute() -> None:
    on, off = plan("8b", checkpointing=True), plan("8b", checkpointing=False)
    assert on.flops_per_token / off.flops_per_token == pytest.approx(1.5, rel=0.05)
    assert on.activation_bytes < off.activation_bytes
    assert on.activation_bytes_checkpointed == on.activation_bytes == off.activation_bytes_checkpointed


def test_an_unknown_gpu_type_gives_memory_but_no_verdict_or_hours() -> None:
    fit = plan("8b", gpu=None)
    assert fit.gpu_type is None and fit.fits is None and fit.suggestion is None
    assert fit.job.memory_bytes > 0 and fit.job.gpu_hours is None and fit.wall_hours is None


def test_a_job_that_cannot_fit_at_all_has_no_suggestion() -> None:
    fit = plan("70b", gpu="L4-24GB", quantization=Quantization.FOUR_BIT, seq=8192)
    assert fit.fits is False and fit.suggestion is None


def test_more_gpus_shorten_the_wall_time_but_not_the_gpu_hours() -> None:
    one, eight = plan("8b", gpus=1), plan("8b", gpus=8)
    assert one.job.gpu_hours is not None and eight.job.gpu_hours is not None
    assert eight.job.gpu_hours == pytest.approx(one.job.gpu_hours / planner.MULTI_GPU_EFFICIENCY["lora"], rel=0.02)
    assert eight.wall_hours is not None and one.wall_hours is not None and eight.wall_hours < one.wall_hours / 6


def test_fsdp_shards_the_weights_and_adapter_state() -> None:
    estimate = estimate_memory(LLAMA["70b"], TrainingSpec(gradient_checkpointing=True, batch_size=1), LoRASpec(), 1)
    eight = planner.fsdp_memory(estimate, layers=80, ranks=8)
    assert eight < estimate.total_bytes / 4
    assert eight > estimate.weights_bytes / 8 + estimate.activation_bytes


def test_flops_per_token_is_about_four_times_the_matmul_parameters() -> None:
    n = planner.matmul_parameters(LLAMA["8b"])
    assert 7.4e9 < n < 7.6e9  # 7.0B in the blocks + 0.53B LM head
    flops = planner.flops_per_token(LLAMA["8b"], data(mean=10), checkpointing=False)
    assert flops == pytest.approx(4 * n, rel=0.01)


@pytest.mark.parametrize(
    ("selector", "name"),
    [
        ({"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, "H100-80GB"),
        ({"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB"}, "A100-40GB"),
        ({"cloud.google.com/gke-accelerator": "nvidia-a100-80gb"}, "A100-80GB"),
        ({"cloud.google.com/gke-accelerator": "nvidia-tesla-a100"}, "A100-40GB"),
        ({"cloud.google.com/gke-accelerator": "nvidia-h200-141gb"}, "H200-141GB"),
        ({"nvidia.com/gpu.product": "NVIDIA-L40S"}, "L40S-48GB"),
        ({"cloud.google.com/gke-accelerator": "nvidia-l4"}, "L4-24GB"),
        ({"kubernetes.io/arch": "amd64", "pool": "gpu"}, None),
    ],
)
def test_the_gpu_type_comes_from_the_node_selector(selector: dict[str, str], name: str | None) -> None:
    gpu = gpu_type_from_node_selector(selector)
    assert (gpu.name if gpu else None) == name


def test_a_type_name_is_its_own_label() -> None:
    assert all(gpu_type_named(name) is gpu for name, gpu in GPU_TYPES.items())


def test_auto_sharding_makes_a_70b_lora_fit_eight_h100s() -> None:
    fit = plan("70b", gpus=8)
    assert fit.job.method == "fsdp" and fit.job.gpus == 8 and fit.fits is True
    assert fit.job.memory_bytes < 40 * GIB


def test_ddp_on_eight_gpus_is_told_to_shard_the_same_gpus() -> None:
    fit = plan("70b", gpus=8, sharding=Sharding.DDP)
    assert fit.job.method == "lora" and fit.fits is False
    assert fit.suggestion is not None and (fit.suggestion.method, fit.suggestion.gpus) == ("fsdp", 8)


def test_when_nothing_fits_the_gpus_the_job_has_more_of_them_with_fsdp_is_the_suggestion() -> None:
    fit = plan("70b", gpu="L40S-48GB", quantization=Quantization.FOUR_BIT)
    assert fit.fits is False and fit.suggestion is not None
    assert fit.suggestion.method == "fsdp" and fit.suggestion.gpus in {4, 8}
    assert fit.suggestion.memory_bytes <= usable_bytes(GPU_TYPES["L40S-48GB"].memory_bytes)
