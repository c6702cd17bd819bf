"""SDPA per packed row on CUDA in bf16: what a GPU without flash-attn runs for packed rows.

    pytest -m cuda -s tests/gpu/test_packed_attention_cuda.py

On CUDA, `architectures.attention_order(..., packed=True)` puts `kubetune_packed_sdpa` first when
flash-attn is not installed (the GPU image of bench/gpu_check.sh has none), so this is the path its
1B-shaped bench trains through. The CPU tests (tests/unit/test_packed_attention.py) prove exactness
in fp32; this checks the same on CUDA, in bf16, against masked SDPA, with a tolerance for bf16's
different summation order. The test builds a 4-layer Llama with 8 rows packed per sequence of 1024.
Skipped without CUDA; `test_the_same_comparison_runs_on_cpu` runs its code on CPU in CI.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from kubetune_trainer import packed_attention
from kubetune_trainer.architectures import PACKED_SDPA, SDPA

SHAPE: dict[str, Any] = {
    "vocab_size": 1024,
    "hidden_size": 512,
    "intermediate_size": 1024,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
}
LENGTH = 1024


def packed_batch(device: str, rows_per_sequence: int = 8, sequences: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Random tokens; each sequence holds rows of random lengths with restarting positions."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, SHAPE["vocab_size"], (sequences, LENGTH), generator=generator)
    positions = torch.zeros(sequences, LENGTH, dtype=torch.long)
    for b in range(sequences):
        cuts = sorted(torch.randperm(LENGTH - 1, generator=generator)[: rows_per_sequence - 1].add(1).tolist())
        bounds = [0, *cuts, LENGTH]
        positions[b] = torch.cat([torch.arange(e - s) for s, e in itertools.pairwise(bounds)])
    return ids.to(device), positions.to(device)


def compare(device: str, dtype: torch.dtype) -> dict[str, float]:
    """Logits and LoRA-free gradients of masked SDPA vs SDPA per row: the largest differences,
    relative to each tensor's scale."""
    packed_attention.register()
    config = AutoConfig.for_model("llama", **SHAPE)
    torch.manual_seed(0)
    reference = AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation=SDPA)
    packed = AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation=PACKED_SDPA)
    packed.load_state_dict(reference.state_dict())
    ids, positions = packed_batch(device)
    out: dict[str, list[torch.Tensor]] = {}
    for name, model in (("reference", reference), ("packed", packed)):
        model.to(device=device, dtype=dtype)
        logits = model(input_ids=ids, position_ids=positions, use_cache=False).logits
        logits.float().logsumexp(-1).mean().backward()
        grads = [p.grad.float() for p in model.parameters() if p.grad is not None]
        out[name] = [logits.detach().float(), *grads]
    worst_logit = (out["packed"][0] - out["reference"][0]).abs().max() / out["reference"][0].abs().max()
    worst_grad = max(
        ((got - want).abs().max() / want.abs().max().clamp_min(1e-12)).item()
        for got, want in zip(out["packed"][1:], out["reference"][1:], strict=True)
    )
    return {"logits": worst_logit.item(), "grads": worst_grad}


def test_the_same_comparison_runs_on_cpu() -> None:
    diffs = compare("cpu", torch.float32)
    assert diffs["logits"] < 1e-5 and diffs["grads"] < 1e-4, diffs


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_packed_rows_match_masked_sdpa_in_bf16_on_cuda() -> None:
    diffs = compare("cuda", torch.bfloat16)
    print(f"packed-sdpa-cuda: {diffs}")
    # bf16 has 8 bits of mantissa (~0.4% per rounding); different summation orders stay within a few %
    assert diffs["logits"] < 0.02 and diffs["grads"] < 0.05, diffs
