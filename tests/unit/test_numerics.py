"""Device-dependent choices (precision, attention), testable without a GPU."""

from __future__ import annotations

import pytest
import torch

from kubetune_api.spec import Precision
from kubetune_trainer.errors import InvalidSpec
from kubetune_trainer.modeling import choose_numerics


def test_cpu_auto_is_fp32_with_sdpa() -> None:
    numerics = choose_numerics(Precision.AUTO, "cpu")
    assert (numerics.mixed_precision, numerics.load_dtype, numerics.attn_implementation) == (
        "no",
        torch.float32,
        "sdpa",
    )


def test_cpu_bf16_autocasts_but_keeps_fp32_weights() -> None:
    numerics = choose_numerics(Precision.BF16, "cpu")
    assert numerics.mixed_precision == "bf16" and numerics.load_dtype == torch.float32


def test_fp16_on_cpu_is_a_user_error() -> None:
    with pytest.raises(InvalidSpec, match=r"training.precision: fp16 needs a GPU"):
        choose_numerics(Precision.FP16, "cpu")


def test_cuda_bf16_loads_base_weights_in_bf16() -> None:
    """On CUDA the base weights are stored in the compute dtype (half the memory)."""
    numerics = choose_numerics(Precision.BF16, "cuda")
    assert numerics.mixed_precision == "bf16" and numerics.load_dtype == torch.bfloat16
    assert numerics.attn_implementation in {"sdpa", "flash_attention_2"}


def test_cuda_fp16_loads_fp16() -> None:
    numerics = choose_numerics(Precision.FP16, "cuda")
    assert numerics.mixed_precision == "fp16" and numerics.load_dtype == torch.float16
