"""SDPA that computes attention only within each packed row.

With packing, transformers turns restarting position_ids into a block-diagonal causal mask and
SDPA then computes every query against all maxSeqLength keys of the packed sequence, although a
row only attends within itself. Without flash-attn (CPU, most GPUs) that is where most attention
FLOPs go. This implementation reads the rows off that mask and runs causal SDPA per row instead,
rows of similar length batched into one call (right-padded to a common length: with a causal mask
the padding is after every real key, so real queries never see it and the result is exact).

Anything that is not a packed training batch (no mask, a padding mask, a KV cache, a sliding window
shorter than a row, softcapping, position biases, tracing) goes to transformers' own sdpa path, so
the implementation is a drop-in for "sdpa". Rows are taken from the mask, not from position_ids,
so what is computed is exactly what the mask allows; the mask is checked once per forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

PACKED_SDPA = "kubetune_packed_sdpa"  # the name architectures.attention_order offers

# Where the plan for a mask is kept: on the mask tensor itself, which transformers builds once
# per forward pass and hands to every layer (and again to the recomputation under checkpointing).
_PLAN_ATTR = "_kubetune_packed_plan"


@dataclass(frozen=True)
class _Bucket:
    index: torch.Tensor  # (rows * length,): flat token positions (batch * seq), padded by clamping
    rows: int
    length: int


@dataclass(frozen=True)
class _Plan:
    buckets: list[_Bucket]
    inverse: torch.Tensor  # flat position -> its place in the concatenated (padded) bucket outputs


def packed_sdpa_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    position_bias: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature; query/key/value are (batch, heads, seq, head_dim)."""
    plan = None
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if causal and position_bias is None and kwargs.get("softcap") is None and kwargs.get("s_aux") is None:
        plan = _plan_for(attention_mask, query, key)
    if plan is None:
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            position_bias=position_bias,
            **kwargs,
        )
    groups = int(getattr(module, "num_key_value_groups", 1))
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    batch, heads, length, _ = query.shape
    # Token-major views, so one index picks a row's tokens with all their heads. index_select, not
    # advanced indexing: its backward is index_add, where advanced indexing's is a much slower
    # accumulating index_put on CPU.
    flat = [t.transpose(1, 2).reshape(batch * length, heads, t.shape[-1]) for t in (query, key, value)]
    outputs = []
    for bucket in plan.buckets:
        q, k, v = (
            t.index_select(0, bucket.index).view(bucket.rows, bucket.length, heads, -1).transpose(1, 2) for t in flat
        )  # (rows, heads, length, head_dim)
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout, scale=scaling, is_causal=True
        )
        outputs.append(out.transpose(1, 2).reshape(bucket.rows * bucket.length, heads, -1))
    attn_output = torch.cat(outputs).index_select(0, plan.inverse)  # the padding's outputs are dropped here
    # transformers' layout: (batch, seq, heads, head_dim), contiguous
    return attn_output.reshape(batch, length, heads, value.shape[-1]), None


def _plan_for(mask: torch.Tensor | None, query: torch.Tensor, key: torch.Tensor) -> _Plan | None:
    """The rows of a packed batch, or None when the batch is not one (then plain SDPA runs)."""
    if mask is None or not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.ndim != 4:
        return None
    if torch.compiler.is_compiling() or torch._C._get_tracing_state() is not None:
        return None  # data-dependent shapes: leave compiled graphs to the plain path
    batch, _, length, _ = query.shape
    if key.shape[2] != length or tuple(mask.shape) != (batch, 1, length, length):
        return None  # a KV cache (generation) or a mask of another shape
    if not hasattr(mask, _PLAN_ATTR):
        setattr(mask, _PLAN_ATTR, _make_plan(mask[:, 0]))
    plan: _Plan | None = getattr(mask, _PLAN_ATTR)
    return plan


def _make_plan(mask: torch.Tensor) -> _Plan | None:
    """Rows from a (batch, seq, seq) mask, if it is exactly block-diagonal causal with some block
    boundary inside a sequence; a sliding window shorter than a row, or padding, makes it differ."""
    batch, length, _ = mask.shape
    device = mask.device
    # Token i starts a row where it may not see token i-1.
    starts = ~mask.diagonal(offset=-1, dim1=1, dim2=2)
    if not bool(starts.any()):
        return None  # nothing packed: one row per sequence, plain causal SDPA is as fast
    row = torch.cat([torch.zeros(batch, 1, dtype=torch.long, device=device), starts.long()], dim=1).cumsum(1)
    pos = torch.arange(length, device=device)
    expected = (row[:, :, None] == row[:, None, :]) & (pos[:, None] >= pos[None, :])
    if not torch.equal(mask, expected):
        return None
    # (flat start, length) of every row, grouped by length rounded up to a quarter octave so that a
    # few batched calls do the work of many small ones, with at most 25% padding.
    first = torch.cat([torch.ones(batch, 1, dtype=torch.bool, device=device), starts], dim=1)
    flat_starts = first.flatten().nonzero().flatten().tolist()
    seq_ends = [(s // length + 1) * length for s in flat_starts]
    spans = [
        (s, (flat_starts[i + 1] if i + 1 < len(flat_starts) and flat_starts[i + 1] < seq_ends[i] else seq_ends[i]) - s)
        for i, s in enumerate(flat_starts)
    ]
    groups: dict[int, list[tuple[int, int]]] = {}
    for start, n in spans:
        step = max(1, 1 << max(0, n.bit_length() - 3))
        groups.setdefault(-(-n // step) * step, []).append((start, n))
    buckets = []
    inverse = torch.empty(batch * length, dtype=torch.long, device=device)
    base = 0  # where this bucket's outputs start in the concatenated outputs
    for padded, members in sorted(groups.items()):
        starts_t = torch.tensor([s for s, _ in members], device=device)
        lens_t = torch.tensor([n for _, n in members], device=device)
        offsets = torch.arange(padded, device=device)
        valid = offsets[None, :] < lens_t[:, None]
        # Padding repeats the row's last token: it sits after every real key, so causal attention
        # never lets a real query see it, and its own outputs are dropped.
        index = starts_t[:, None] + torch.minimum(offsets[None, :], lens_t[:, None] - 1)
        places = base + torch.arange(index.numel(), device=device).view_as(index)
        inverse[index[valid]] = places[valid]
        buckets.append(_Bucket(index=index.flatten(), rows=len(members), length=padded))
        base += index.numel()
    return _Plan(buckets=buckets, inverse=inverse)


def register() -> None:
    """Make PACKED_SDPA loadable (attn_implementation=PACKED_SDPA) with sdpa's masks."""
    AttentionInterface.register(PACKED_SDPA, packed_sdpa_forward)
    AttentionMaskInterface.register(PACKED_SDPA, sdpa_mask)


register()
