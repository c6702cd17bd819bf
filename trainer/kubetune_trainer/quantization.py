"""QLoRA: the frozen base stored in 4 or 8 bits through bitsandbytes, and what that rules out.

    quantization_problem   why a LoRA spec cannot train here (preflight and the trainer ask)
    from_pretrained_kwargs what `from_pretrained` needs to load the base quantised
    prepare_for_training   PEFT's k-bit preparation (frozen base, fp32 norms, checkpointing)
    merge_unquantized      `output.mergeAdapter` for a quantised base: the adapter merged into
                           the base weights loaded again *without* quantisation

Measured here (peft 0.21.2, bitsandbytes 0.50.2, torch 2.13 CPU): LoRA trains on a 4-bit and
an 8-bit base, DoRA on a 4-bit base. DoRA on an 8-bit base fails on CPU at the second step:
PEFT's DoRA dequantises the int8 weight every forward, and its CPU branch (`module.weight =
module.weight.to(device)`, from huggingface/peft#1724) leaves bitsandbytes without the int8 row
scales. Without that line it trains, and CUDA does not take it, so the pair is refused on CPU
only (tests/gpu/test_qlora_cuda.py checks it on a GPU). bitsandbytes is an optional extra
(`kubetune[qlora]`), so its absence is refused too, before any GPU is requested.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, PreTrainedModel

from kubetune_api.spec import LoRASpec, Quantization
from kubetune_trainer.errors import InvalidSpec

log = logging.getLogger(__name__)

BITSANDBYTES = "bitsandbytes"


def quantization_problem(spec: LoRASpec, device_type: str) -> str | None:
    """Why this LoRA spec cannot train on `device_type` with the installed libraries, naming the field."""
    if spec.quantization is Quantization.NONE:
        return None
    if importlib.util.find_spec(BITSANDBYTES) is None:
        return (
            f"lora.quantization: {spec.quantization} needs bitsandbytes, which is not installed in this trainer "
            "image; install kubetune[qlora] (bitsandbytes>=0.50) in the image, or set lora.quantization: none"
        )
    if spec.use_dora and spec.quantization is Quantization.EIGHT_BIT and device_type != "cuda":
        return (
            "lora.useDora: DoRA cannot train on an 8-bit (LLM.int8) base on CPU with peft and bitsandbytes "
            "(the int8 scales are lost after the first step); use lora.quantization: 4bit or none with DoRA, "
            "turn lora.useDora off, or train on a GPU"
        )
    return None


def check(spec: LoRASpec, device_type: str) -> None:
    problem = quantization_problem(spec, device_type)
    if problem:
        raise InvalidSpec(problem)


def compute_dtype(load_dtype: torch.dtype, device_type: str) -> torch.dtype:
    """bf16 (or fp16) on GPU as the run's precision says; fp32 on CPU, where 16-bit matmuls are slow."""
    return load_dtype if device_type == "cuda" else torch.float32


def bnb_config(quantization: Quantization, compute: torch.dtype) -> BitsAndBytesConfig | None:
    if quantization is Quantization.FOUR_BIT:
        # The QLoRA paper's recipe: NF4 data type, double quantisation of the block scales.
        return BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
        )
    if quantization is Quantization.EIGHT_BIT:
        return BitsAndBytesConfig(load_in_8bit=True)  # type: ignore[no-untyped-call]
    return None


def from_pretrained_kwargs(quantization: Quantization, load_dtype: torch.dtype, device_type: str) -> dict[str, Any]:
    """Extra `from_pretrained` arguments: none for an unquantised base.

    A quantised model is placed as it loads and cannot be moved afterwards, so it goes straight
    to this rank's device (accelerate has set the current CUDA device by now).
    """
    config = bnb_config(quantization, compute_dtype(load_dtype, device_type))
    if config is None:
        return {}
    device: int | str = torch.cuda.current_device() if device_type == "cuda" else "cpu"
    return {"quantization_config": config, "device_map": {"": device}}


def prepare_for_training(model: PreTrainedModel, gradient_checkpointing: bool) -> PreTrainedModel:
    """PEFT's k-bit preparation: base frozen, non-quantised weights (norms, embeddings) in fp32.

    It also enables gradient checkpointing when asked, non-reentrant as for unquantised models.
    """
    prepared: PreTrainedModel = prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]
        model,
        use_gradient_checkpointing=gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
    return prepared


def merge_unquantized(model_dir: Path, adapter_dir: Path, out: Path) -> None:
    """Merge the saved adapter into the base weights as staged, not into their 4/8-bit rounding.

    The base is loaded again in its stored dtype on the CPU (host memory: about 2 bytes per
    parameter for a bf16 model), so the merged model is the full-precision base plus the adapter,
    the same model `PeftModel.from_pretrained(unquantised base, adapter)` computes.
    """
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype="auto", device_map={"": "cpu"})
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload(safe_merge=True)
    merged.save_pretrained(str(out), safe_serialization=True)
    log.info("merged the adapter into the unquantised base from %s", model_dir)
