"""SDPA per packed row (packed_attention) computes what masked SDPA computes, and is chosen only where safe."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from kubetune_trainer import architectures, packed_attention
from kubetune_trainer.architectures import EAGER, FLASH, PACKED_SDPA, SDPA, attention_order

TINY = {
    "vocab_size": 97,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 256,
}
# Rows per packed sequence; the second sequence is right-padded (pads continue its last row, as packing.collate does).
ROWS = [[5, 17, 3, 30, 9], [40, 9, 6, 1]]
LENGTH = 64


def packed_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, TINY["vocab_size"], (len(ROWS), LENGTH), generator=generator)
    positions = torch.zeros(len(ROWS), LENGTH, dtype=torch.long)
    for b, rows in enumerate(ROWS):
        pos = [p for n in rows for p in range(n)]
        pos += range(pos[-1] + 1, pos[-1] + 1 + LENGTH - len(pos))
        positions[b] = torch.tensor(pos)
    return ids, positions


def pair(model_type: str, **extra: Any) -> tuple[Any, Any]:
    config = AutoConfig.for_model(model_type, **{**TINY, **extra})
    torch.manual_seed(0)
    # a config each: from_config records the attention implementation on the config object it is given
    reference = AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation=SDPA)
    packed = AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation=PACKED_SDPA)
    packed.load_state_dict(reference.state_dict())
    assert (reference.config._attn_implementation, packed.config._attn_implementation) == (SDPA, PACKED_SDPA)
    return reference, packed


def logits_and_grads(model: Any, ids: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    logits = model(input_ids=ids, position_ids=positions, use_cache=False).logits
    (logits.float() * torch.linspace(-1, 1, logits.shape[-1])).sum().backward()
    return logits.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def plans_made(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    made: list[bool] = []
    original = packed_attention._make_plan

    def spy(mask: torch.Tensor) -> Any:
        plan = original(mask)
        made.append(plan is not None)
        return plan

    monkeypatch.setattr(packed_attention, "_make_plan", spy)
    return made


CASES = {
    "llama": ("llama", {"num_key_value_heads": 4}),
    "llama-gqa": ("llama", {"num_key_value_heads": 2}),
    "qwen2-gqa": ("qwen2", {"num_key_value_heads": 1}),
    # window 48 > every row: the sliding mask is block-causal, rows are computed apart
    "mistral-wide-window": ("mistral", {"num_key_value_heads": 2, "sliding_window": 48}),
    # window 8 < the longest rows (17, 30, 40): the mask differs from block-causal, so sdpa's own path runs
    "mistral-narrow-window": ("mistral", {"num_key_value_heads": 2, "sliding_window": 8}),
    # gemma3: alternating sliding (window 16) and full layers, and a query scale other than 1/sqrt(d)
    "gemma3-window": (
        "gemma3_text",
        {"num_key_value_heads": 2, "sliding_window": 16, "layer_types": ["sliding_attention", "full_attention"]},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_packed_rows_give_the_logits_and_gradients_of_masked_sdpa(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model_type, extra = CASES[case]
    reference, packed = pair(model_type, **extra)
    ids, positions = packed_batch()
    want_logits, want_grads = logits_and_grads(reference, ids, positions)
    made = plans_made(monkeypatch)
    got_logits, got_grads = logits_and_grads(packed, ids, positions)
    assert (True in made) is (case != "mistral-narrow-window"), made
    torch.testing.assert_close(got_logits, want_logits, atol=1e-5, rtol=1e-5)
    assert len(got_grads) == len(want_grads)
    for got, want in zip(got_grads, want_grads, strict=True):
        # fp32 summation order differs (rows apart vs one masked matrix): 1e-5 of each gradient's scale
        torch.testing.assert_close(got, want, atol=1e-5 * max(1.0, want.abs().max().item()), rtol=1e-5)


def test_a_row_packed_gives_the_logits_it_gives_alone() -> None:
    _, packed = pair("llama", num_key_value_heads=2)
    ids, positions = packed_batch()
    start, n = sum(ROWS[0][:3]), ROWS[0][3]
    with torch.no_grad():
        together = packed(input_ids=ids, position_ids=positions, use_cache=False).logits[0, start : start + n]
        alone = packed(input_ids=ids[:1, start : start + n], use_cache=False).logits[0]
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_the_sliding_window_layers_fall_back_when_a_row_is_longer_than_the_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, packed = pair("mistral", num_key_value_heads=2, sliding_window=8)
    made = plans_made(monkeypatch)
    ids, positions = packed_batch()
    with torch.no_grad():
        packed(input_ids=ids, position_ids=positions, use_cache=False)
    assert made == [False], "one mask per forward pass, checked once, refused"


def test_unpacked_and_padded_batches_take_sdpas_own_path(monkeypatch: pytest.MonkeyPatch) -> None:
    reference, packed = pair("llama", num_key_value_heads=2)
    made = plans_made(monkeypatch)
    ids, _ = packed_batch()
    padding = torch.ones_like(ids)
    padding[1, :10] = 0  # left padding, as in batched generation
    with torch.no_grad():
        for kwargs in ({}, {"attention_mask": padding}):
            got = packed(input_ids=ids, use_cache=False, **kwargs).logits
            want = reference(input_ids=ids, use_cache=False, **kwargs).logits
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    assert True not in made


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text"])
def test_generation_gives_the_same_tokens(model_type: str) -> None:
    reference, packed = pair(model_type, num_key_value_heads=2)
    ids, _ = packed_batch()
    prompt, padding = ids[:, :12], torch.ones(2, 12, dtype=torch.long)
    padding[1, :4] = 0
    kwargs = {"attention_mask": padding, "max_new_tokens": 8, "do_sample": False, "pad_token_id": 0}
    torch.testing.assert_close(packed.generate(prompt, **kwargs), reference.generate(prompt, **kwargs))


def test_packed_sdpa_comes_before_sdpa_only_when_packing_and_no_flash_attention() -> None:
    everything = frozenset({FLASH, PACKED_SDPA, SDPA, EAGER})
    assert attention_order(everything, "cpu", flash_installed=False, packed=True) == [PACKED_SDPA, SDPA, EAGER]
    assert attention_order(everything, "cuda", flash_installed=False, packed=True) == [PACKED_SDPA, SDPA, EAGER]
    assert attention_order(everything, "cuda", flash_installed=True, packed=True) == [FLASH, SDPA, EAGER]
    assert attention_order(everything, "cpu", flash_installed=False) == [SDPA, EAGER]
    assert attention_order(frozenset({SDPA, EAGER}), "cpu", flash_installed=False, packed=True) == [SDPA, EAGER]
    assert packed_attention.PACKED_SDPA == PACKED_SDPA  # the name packed_attention registers


@pytest.mark.parametrize(
    ("model_type", "offered"),
    [
        ("llama", True),
        ("mistral", True),
        ("gemma3_text", True),
        ("gemma2", False),  # softcapping: no sdpa at all
        ("falcon", False),  # picks its attention by comparing the name with "sdpa"
    ],
)
def test_packed_sdpa_is_offered_only_to_classes_that_dispatch_through_the_attention_interface(
    tmp_path: Path, model_type: str, offered: bool
) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    assert (PACKED_SDPA in architectures.classify(tmp_path).supports) is offered


def test_a_run_that_pads_switches_to_plain_sdpa_and_computes_the_same() -> None:
    """When the packing check turns packing off, the per-row path would never run: the model is
    switched to plain SDPA, so the manifest names what runs, and its outputs do not change."""
    from kubetune_trainer import modeling

    _, model = pair("llama")
    ids = torch.randint(3, TINY["vocab_size"], (2, 16), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0  # a padded batch, as a run without packing has
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        assert modeling.unpacked_attention(model) == SDPA
        after = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    assert torch.equal(before[mask.bool()], after[mask.bool()])
    assert modeling.unpacked_attention(model) == SDPA, "idempotent"
