"""Loading the base model and tokenizer, and wrapping the model with a LoRA adapter.

Device-dependent choices live here and nowhere else:
    precision  auto -> bf16 on GPUs that support it, fp32 otherwise (CPU bf16 is slow)
    attention  flash_attention_2 when flash-attn is installed on CUDA (varlen kernels for
               packed rows), otherwise SDPA; both honour restarting position_ids
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from kubetune_api.spec import ALL_LINEAR, LoRASpec, Precision, precision_problem
from kubetune_trainer.errors import InvalidSpec, ModelInvalid

log = logging.getLogger(__name__)

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "config.json",
    "generation_config.json",
)


@dataclass(frozen=True)
class Numerics:
    mixed_precision: str  # accelerate's: "no" | "bf16" | "fp16"
    load_dtype: torch.dtype
    attn_implementation: str


def choose_numerics(precision: Precision, device_type: str) -> Numerics:
    cuda = device_type == "cuda"
    if precision is Precision.AUTO:
        precision = Precision.BF16 if cuda and torch.cuda.is_bf16_supported() else Precision.FP32
    problem = precision_problem(precision, on_gpu=cuda)  # the rule the operator's admission applies too
    if problem:
        raise InvalidSpec(problem)
    attn = "flash_attention_2" if cuda and importlib.util.find_spec("flash_attn") else "sdpa"
    # Base weights are stored in the compute dtype on GPU (half the memory); LoRA weights stay fp32.
    load_dtype = {Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}.get(precision, torch.float32)
    if not cuda:
        load_dtype = torch.float32
    mixed = {Precision.BF16: "bf16", Precision.FP16: "fp16"}.get(precision, "no")
    return Numerics(mixed_precision=mixed, load_dtype=load_dtype, attn_implementation=attn)


def load_tokenizer(model_dir: Path) -> Any:
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError) as exc:
        raise ModelInvalid(f"{model_dir}: cannot load a tokenizer: {exc}") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ModelInvalid(f"{model_dir}: a fast tokenizer (tokenizer.json) is needed for completion masking")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def model_max_length(model_dir: Path) -> int | None:
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelInvalid(f"{model_dir}/config.json: cannot read the model config: {exc}") from exc
    text_config = config.get("text_config", config)
    value = text_config.get("max_position_embeddings")
    return int(value) if value else None


def check_seq_length(model_dir: Path, max_seq_length: int) -> None:
    limit = model_max_length(model_dir)
    if limit is not None and max_seq_length > limit:
        raise InvalidSpec(
            f"training.maxSeqLength: {max_seq_length} is above the model's limit of {limit} "
            f"(max_position_embeddings in {model_dir.name}/config.json)"
        )


def load_model(model_dir: Path, numerics: Numerics, gradient_checkpointing: bool) -> PreTrainedModel:
    try:
        AutoConfig.from_pretrained(str(model_dir))
        model = AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype=numerics.load_dtype, attn_implementation=numerics.attn_implementation
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelInvalid(f"{model_dir}: cannot load a causal LM: {exc}") from exc
    model.config.use_cache = False
    if gradient_checkpointing:
        # Non-reentrant: reentrant checkpointing with frozen base weights is up to 2x slower.
        model.gradient_checkpointing_enable(  # type: ignore[no-untyped-call]
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    return model


def lora_config(spec: LoRASpec) -> LoraConfig:
    targets: str | list[str] = ALL_LINEAR if spec.target_modules == [ALL_LINEAR] else list(spec.target_modules)
    return LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,  # type: ignore[arg-type]  # peft accepts floats; its hint says int
        lora_dropout=spec.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
        use_dora=spec.use_dora,
        use_rslora=spec.use_rslora,
    )


def add_lora(model: PreTrainedModel, spec: LoRASpec) -> PeftModel:
    try:
        peft_model = get_peft_model(model, lora_config(spec))
    except ValueError as exc:
        raise InvalidSpec(f"lora.targetModules: {exc}") from exc
    return peft_model


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
