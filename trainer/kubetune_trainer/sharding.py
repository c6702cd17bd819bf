"""How several processes share the model: DDP (a full copy each) or FSDP2 (everything sharded).

    resolve          training.sharding + world size + memory -> "single" | "ddp" | "fsdp" (pure)
    fsdp_plugin      accelerate's FSDP2 plugin: one unit per decoder layer (the class's
                     _no_split_modules), resharded after forward, full state dicts
    trainable_state  the adapter's parameters as full tensors, by parameter name: every rank calls
                     it (FSDP2 gathers shards), every rank gets the result
    optimizer_state  the optimizer's state as a full state dict keyed by parameter name
    load_*           the reverse, on a plain, DDP or FSDP2 model alike

Checkpoints hold full, name-keyed state (checkpoint.py), so a run resumes under another world
size or strategy: 2 ranks -> 1, 1 -> 2, ddp -> fsdp. The adapter is small (r x (in + out) per
layer), so gathering it is cheap even when the base is 70B; the base itself is never gathered.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from accelerate import FullyShardedDataParallelPlugin
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor

from kubetune_api.gpus import usable_bytes
from kubetune_api.spec import LoRASpec, Sharding, TrainingSpec, sharding_problem
from kubetune_trainer.errors import InvalidSpec

Strategy = Literal["single", "ddp", "fsdp"]


def check(training: TrainingSpec, lora: LoRASpec) -> None:
    problem = sharding_problem(training, lora)
    if problem:
        raise InvalidSpec(problem)


def resolve(requested: Sharding, world_size: int, full_copy_bytes: int | None, gpu_bytes: int | None) -> Strategy:
    """The strategy a run uses. auto: fsdp only when a full copy of the model (the memory estimate
    for DDP) does not fit the GPU; without an estimate or a GPU, ddp."""
    if world_size <= 1:
        return "single"
    if requested is Sharding.FSDP:
        return "fsdp"
    if requested is Sharding.DDP:
        return "ddp"
    if full_copy_bytes is not None and gpu_bytes is not None and full_copy_bytes > usable_bytes(gpu_bytes):
        return "fsdp"
    return "ddp"


def fsdp_plugin() -> FullyShardedDataParallelPlugin:
    """FSDP2 through accelerate. transformer_based_wrap without class names wraps the model's own
    _no_split_modules (LlamaDecoderLayer, Qwen3DecoderLayer, ...): one unit per decoder layer."""
    return FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="transformer_based_wrap",
        reshard_after_forward=True,
        state_dict_type="FULL_STATE_DICT",
        # Loading is ours (load_trainable_state after prepare): no rank-0 broadcast of the base.
        cpu_ram_efficient_loading=False,
    )


def _full(tensor: torch.Tensor) -> torch.Tensor:
    full = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor.detach()
    return full.to("cpu", copy=True)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable parameter, whole, on CPU, by its name in `model` (the unwrapped PeftModel).
    A collective under FSDP2: every rank must call it, in the same order (named_parameters is)."""
    return {name: _full(p) for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """The reverse of trainable_state, onto a plain, DDP-wrapped or FSDP2-sharded model."""
    expected = {name for name, p in model.named_parameters() if p.requires_grad}
    missing = expected - state.keys()
    if missing:
        raise KeyError(f"the checkpoint lacks {len(missing)} adapter tensors, e.g. {sorted(missing)[0]}")
    full: dict[str, Any] = dict(state)
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, strict=False))


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state as one full state dict keyed by parameter name (a collective)."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return dict(get_optimizer_state_dict(model, optimizer, options=options))


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """strict=False: an adapter tensor that never got a gradient (a layer the forward pass skips, such
    as an unused indexer) has no AdamW state to save or restore; its weights are still checked by
    load_trainable_state."""
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True, strict=False))
