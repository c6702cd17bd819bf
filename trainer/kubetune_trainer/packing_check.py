"""Do packed rows stay apart in this model? A run-time self-test on the real loaded model.

Packing relies on the model turning restarting `position_ids` into a block-diagonal mask.
Attention layers in transformers do; recurrent, state-space and linear-attention layers
(Mamba, Jamba, Qwen3-Next, MiniMax, ...) carry state across the boundary and ignore them.
So before training, a short random row is run alone and packed behind two different random
rows; if its logits change with the row before it (or differ from the row alone), packing is
turned off for the run (rows are padded instead) and the reason is reported. It costs three
forward passes of a few tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

# The first row is longer than the second so that state carried over (the failure mode) has
# room to build up; both are far below any sliding window.
FIRST_ROW_TOKENS, SECOND_ROW_TOKENS = 24, 8


@dataclass(frozen=True)
class PackingCheck:
    # Largest |logit difference| of the second row, relative to the logits' scale:
    content_leak: float  # packed after one random first row vs after another (same shapes)
    alone_gap: float  # packed vs alone (also catches positions that do not restart)
    alone_tolerance: float  # numerical noise allowed between packed and alone, by dtype

    @property
    def isolated(self) -> bool:
        return self.content_leak <= CONTENT_TOLERANCE and self.alone_gap <= self.alone_tolerance

    @property
    def leak(self) -> float:
        return max(self.content_leak, self.alone_gap)

    def describe(self) -> str:
        return (
            "packed rows see each other in this architecture (a packed row's logits change with the row "
            f"before it by {self.content_leak:.2g} of their scale, and differ from the row alone by "
            f"{self.alone_gap:.2g}); rows are padded instead"
        )


# Two forward passes of identical shapes and positions that differ only in the first row's
# tokens: with a block-diagonal mask the second row's computation is the same sum of the same
# numbers (masked terms are exact zeros), so the difference is 0 in any dtype. Any content
# that crosses the boundary shows up far above this, in bf16 as in fp32.
CONTENT_TOLERANCE = 1e-3


def tolerance_for(dtype: torch.dtype) -> float:
    """Noise between a packed and an unpacked forward pass (different lengths), by compute dtype.

    fp32 agrees to ~1e-6; half-precision kernels tile differently for different lengths, so
    allow a few units of bf16's 2**-8 resolution there."""
    return 1e-4 if dtype == torch.float32 else 5e-2


def check_packing(model: Any, vocab_size: int, device: torch.device | str, seed: int = 0) -> PackingCheck:
    """Run random rows packed and alone through `model` and compare the second row's logits."""
    generator = torch.Generator().manual_seed(seed)
    high = max(4, min(vocab_size, 32_000))

    def tokens(n: int) -> torch.Tensor:
        return torch.randint(3, high, (1, n), generator=generator).to(device)

    first, other_first, second = tokens(FIRST_ROW_TOKENS), tokens(FIRST_ROW_TOKENS), tokens(SECOND_ROW_TOKENS)
    positions = torch.cat([torch.arange(FIRST_ROW_TOKENS), torch.arange(SECOND_ROW_TOKENS)])[None].to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            # use_cache=False: with a cache, transformers does not look for packed rows at all.
            alone = _logits(model, second, torch.arange(SECOND_ROW_TOKENS)[None].to(device))
            packed = _logits(model, torch.cat([first, second], dim=1), positions)[:, FIRST_ROW_TOKENS:]
            other = _logits(model, torch.cat([other_first, second], dim=1), positions)[:, FIRST_ROW_TOKENS:]
    finally:
        model.train(was_training)
    scale = max(1.0, alone.abs().max().item())
    return PackingCheck(
        content_leak=(packed - other).abs().max().item() / scale,
        alone_gap=(packed - alone).abs().max().item() / scale,
        alone_tolerance=tolerance_for(compute_dtype(model)),
    )


def compute_dtype(model: Any) -> torch.dtype:
    """The dtype the base weights compute in (the first floating-point parameter's)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def _logits(model: Any, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=input_ids, position_ids=position_ids, use_cache=False)
    logits: torch.Tensor = out.logits
    return logits.float()
