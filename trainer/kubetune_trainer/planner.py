"""Fit and time plan: will the job fit its GPUs, what is the cheapest change that would, and how
many GPU-hours it takes. Pure arithmetic over config.json, the spec and preflight's token counts:
no weights, no torch, so it runs in the CPU preflight before any GPU is requested.

    memory per GPU    memory.estimate_memory (weights, LoRA state, activations, logits, overhead),
                      and for fsdp the base weights and LoRA state sharded over the ranks plus two
                      gathered layers (the one computing and the one prefetched); fsdp is the job's
                      own strategy when training.sharding says so (or auto finds a full copy too big)
    FLOPs per token   4·N for a LoRA step (forward 2·N, backward 2·N: the frozen weights get no
                      weight gradient; N = matmul parameters, LM head included), +2·N when
                      activations are recomputed, plus causal attention over the mean row
    time              FLOPs / (GPUs · peak bf16 · assumed MFU); QLoRA's dequantisation and
                      multi-GPU communication lower the MFU by the factors below

The assumed MFU and these factors are guesses until bench/gpu_check.sh measures them on a GPU;
docs/scaling.md lists what the formulas leave out.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from kubetune_api.gpus import GpuType, usable_bytes
from kubetune_api.protocol import DataStats, FitOption, FitPlan, MemoryEstimate, StepPlan
from kubetune_api.spec import LoRASpec, Quantization, Sharding, TrainingSpec
from kubetune_trainer.memory import estimate_memory

QLORA_MFU_FACTOR = 0.75  # dequantising NF4/int8 weights on every forward and backward pass
MULTI_GPU_EFFICIENCY = {"lora": 0.90, "qlora-4bit": 0.90, "qlora-8bit": 0.90, "fsdp": 0.80}
FSDP_SIZES = (2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class Variant:
    """A way to run the job (what FitOption reports, before its numbers)."""

    quantization: Quantization
    sharded: bool
    gpus: int
    micro_batch: int
    checkpointing: bool

    @property
    def method(self) -> str:
        if self.sharded:
            return "fsdp"
        return "lora" if self.quantization is Quantization.NONE else f"qlora-{self.quantization.value}"


def plan_fit(
    model_config: dict[str, Any],
    training: TrainingSpec,
    lora: LoRASpec,
    steps: StepPlan,
    data: DataStats,
    gpus: int,
    gpu: GpuType | None,
) -> FitPlan:
    """The plan for `gpus` GPUs (per node × nodes) of type `gpu` (None: unknown, no verdict)."""
    written = Variant(lora.quantization, False, gpus, steps.batch_size, training.gradient_checkpointing)
    if gpus > 1 and lora.quantization is Quantization.NONE:
        # The strategy the trainer will pick (sharding.resolve): fsdp when asked, or on auto when a
        # full copy does not fit the GPU.
        full_copy = variant_memory(model_config, training, lora, written)
        too_big = gpu is not None and full_copy > usable_bytes(gpu.memory_bytes)
        if training.sharding is Sharding.FSDP or (training.sharding is Sharding.AUTO and too_big):
            written = replace(written, sharded=True)
    tokens = fed_tokens(training, steps, data)

    def option(variant: Variant) -> FitOption:
        memory = variant_memory(model_config, training, lora, variant)
        hours = None
        if gpu is not None:
            flops = tokens * flops_per_token(model_config, data, variant.checkpointing)
            hours = flops / (gpu.peak_bf16_flops * mfu(gpu, variant)) / 3600
        return FitOption(
            method=variant.method,
            gpus=variant.gpus,
            micro_batch=variant.micro_batch,
            gradient_checkpointing=variant.checkpointing,
            memory_bytes=memory,
            gpu_hours=hours,
        )

    job = option(written)
    estimate = estimate_memory(model_config, training, lora, steps.batch_size)
    checkpointed = estimate_memory(
        model_config, training.model_copy(update={"gradient_checkpointing": True}), lora, steps.batch_size
    )
    fits, suggestion = None, None
    if gpu is not None:
        usable = usable_bytes(gpu.memory_bytes)
        fits = job.memory_bytes <= usable
        if not fits:
            fitting = [o for o in map(option, alternatives(written, gpu)) if o.memory_bytes <= usable]
            # Cheapest: a change on the GPUs the job has before one that needs more of them, then
            # the fewest GPU-hours, then the fewest GPUs.
            suggestion = min(
                fitting, key=lambda o: (o.gpus > written.gpus, round(o.gpu_hours or 0.0, 3), o.gpus), default=None
            )
    return FitPlan(
        gpu_type=gpu.name if gpu else None,
        gpu_memory_bytes=gpu.memory_bytes if gpu else None,
        job=job,
        activation_bytes=estimate.activation_bytes,
        activation_bytes_checkpointed=checkpointed.activation_bytes,
        fits=fits,
        suggestion=suggestion,
        tokens=tokens,
        flops_per_token=flops_per_token(model_config, data, training.gradient_checkpointing),
        assumed_mfu=mfu(gpu, written) if gpu else None,
        wall_hours=job.gpu_hours / gpus if job.gpu_hours is not None and gpus else None,
    )


def alternatives(written: Variant, gpu: GpuType) -> list[Variant]:
    """Changes a user can make in the spec, smallest first: a smaller micro-batch (with more
    accumulation, so the same rows per step), gradient checkpointing, 4-bit QLoRA, and FSDP over
    more GPUs (whole nodes of `gpu.max_per_node` beyond one node)."""
    micro = []
    batch = written.micro_batch
    while batch > 1:
        batch //= 2
        micro.append(batch)
    options: list[Variant] = []
    for quantization in dict.fromkeys((written.quantization, Quantization.FOUR_BIT)):
        for checkpointing in dict.fromkeys((written.checkpointing, True)):
            for b in (written.micro_batch, *micro):
                sharded = written.sharded and quantization is Quantization.NONE
                candidate = Variant(quantization, sharded, written.gpus, b, checkpointing)
                if candidate != written:
                    options.append(candidate)
    if written.gpus > 1 and not written.sharded:  # the same GPUs, sharded instead of replicated
        for checkpointing in dict.fromkeys((written.checkpointing, True)):
            options.append(Variant(Quantization.NONE, True, written.gpus, written.micro_batch, checkpointing))
    sizes = [n for n in FSDP_SIZES if n > written.gpus and (n <= gpu.max_per_node or n % gpu.max_per_node == 0)]
    for gpus in sizes:
        for checkpointing in dict.fromkeys((written.checkpointing, True)):
            options.append(Variant(Quantization.NONE, True, gpus, written.micro_batch, checkpointing))
    return options


def variant_memory(model_config: dict[str, Any], training: TrainingSpec, lora: LoRASpec, variant: Variant) -> int:
    spec = training.model_copy(update={"gradient_checkpointing": variant.checkpointing})
    adapter = lora.model_copy(update={"quantization": variant.quantization})
    estimate = estimate_memory(model_config, spec, adapter, variant.micro_batch)
    if not variant.sharded:
        return estimate.total_bytes
    return fsdp_memory(estimate, int(model_config["num_hidden_layers"]), variant.gpus)


def fsdp_memory(estimate: MemoryEstimate, layers: int, ranks: int) -> int:
    """Base weights and LoRA state sharded over `ranks`; two layers gathered at a time (FSDP2
    prefetches the next layer while one computes); activations and logits are per rank."""
    gathered = 2 * estimate.weights_bytes // max(1, layers)
    return (
        (estimate.weights_bytes + estimate.lora_training_bytes) // ranks
        + gathered
        + estimate.activation_bytes
        + estimate.logits_bytes
        + estimate.overhead_bytes
    )


def matmul_parameters(model_config: dict[str, Any]) -> int:
    """Weights that take part in a matmul for every token: the decoder blocks' linear layers and
    the LM head (the embedding lookup is not a matmul)."""
    hidden, layers = int(model_config["hidden_size"]), int(model_config["num_hidden_layers"])
    heads = int(model_config["num_attention_heads"])
    kv_heads = int(model_config.get("num_key_value_heads") or heads)
    head_dim = int(model_config.get("head_dim") or hidden // heads)
    inter = int(model_config["intermediate_size"])
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)
    mlp = 3 * hidden * inter
    return layers * (attention + mlp) + int(model_config["vocab_size"]) * hidden


def flops_per_token(model_config: dict[str, Any], data: DataStats, checkpointing: bool) -> float:
    n = matmul_parameters(model_config)
    hidden, layers = int(model_config["hidden_size"]), int(model_config["num_hidden_layers"])
    heads = int(model_config["num_attention_heads"])
    width = heads * int(model_config.get("head_dim") or hidden // heads)
    context = max(1.0, data.mean_row_tokens / 2)  # causal: a token attends to half its row on average
    attention_forward = 4 * layers * width * context  # QK^T and AV, 2 FLOPs a multiply-add
    forward = 2 * n + attention_forward
    backward = 2 * n + 2 * attention_forward  # input gradients only for the frozen weights
    return forward + backward + (forward if checkpointing else 0.0)


def fed_tokens(training: TrainingSpec, steps: StepPlan, data: DataStats) -> int:
    """Tokens the whole run feeds the model: packs count whole (their padding is computed too);
    unpacked rows count their own tokens (a lower bound: padding to the longest row is left out)."""
    per_epoch = data.train_sequences * training.max_seq_length if training.packing else data.train_tokens
    return round(per_epoch * steps.total_steps / max(1, steps.steps_per_epoch))


def mfu(gpu: GpuType, variant: Variant) -> float:
    value = gpu.lora_mfu
    if variant.quantization is not Quantization.NONE:
        value *= QLORA_MFU_FACTOR
    if variant.gpus > 1:
        value *= MULTI_GPU_EFFICIENCY[variant.method]
    return value
