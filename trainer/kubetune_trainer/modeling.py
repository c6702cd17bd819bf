"""Loading the base model and tokenizer, and wrapping the model with a LoRA adapter.

Device-dependent choices live here and nowhere else:
    precision  auto -> bf16 on GPUs that support it, fp32 otherwise (CPU bf16 is slow)
    attention  the best implementation the architecture supports on the device, tried in
               order at load (architectures.attention_order): flash_attention_2 (CUDA with
               flash-attn), SDPA per packed row (packed_attention; falls back to SDPA on
               anything not packed), SDPA, flex attention (CUDA), eager
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from kubetune_api.spec import ALL_LINEAR, LoRASpec, Precision, Quantization, precision_problem
from kubetune_trainer import architectures, packed_attention, quantization
from kubetune_trainer.errors import InvalidSpec, ModelInvalid, UnsupportedModel

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
    attn_implementation: str  # the device's first choice; the model may not support it (see load_model)


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


def load_model(
    model_dir: Path,
    numerics: Numerics,
    gradient_checkpointing: bool,
    device_type: str = "cpu",
    quantize: Quantization = Quantization.NONE,
    packed: bool = True,
) -> PreTrainedModel:
    """The base model, with the best attention implementation its class supports on this device.

    The implementations are tried best first (architectures.attention_order); one that fails
    to load is logged and the next is tried, so a missing implementation never fails a run.
    The one loaded is `attention_implementation(model)`.

    `packed`: training rows may be packed, so SDPA per packed row is tried before SDPA. It is on by
    default because that implementation is plain SDPA for anything that is not a packed batch; the
    run-time packing check (packing_check) runs through it, so a model it would mix rows in is padded.
    """
    arch = architectures.classify(model_dir)
    order = architectures.attention_order(
        arch.supports, device_type, architectures.flash_attn_installed(), packed=packed
    )
    if architectures.PACKED_SDPA in order:
        packed_attention.register()  # idempotent; the name must be known before from_pretrained
    model: PreTrainedModel | None = None
    quant_kwargs = quantization.from_pretrained_kwargs(quantize, numerics.load_dtype, device_type)
    for attn in order:
        try:
            model = AutoModelForCausalLM.from_pretrained(
                str(model_dir), dtype=numerics.load_dtype, attn_implementation=attn, **quant_kwargs
            )
            break
        except (ImportError, ValueError, KeyError) as exc:
            # KeyError: a family with its own table of attention classes that lacks the per-row name
            refused = _is_attention_refusal(exc) or (attn == architectures.PACKED_SDPA and isinstance(exc, KeyError))
            if attn == order[-1] or not refused:
                raise ModelInvalid(f"{model_dir}: cannot load a causal LM ({arch.class_name}): {exc}") from exc
            log.warning("%s: attention %s unavailable (%s); trying %s", arch.class_name, attn, exc, "the next")
        except (OSError, RuntimeError) as exc:
            # e.g. "size mismatch for ...": weights that do not fit config.json
            raise ModelInvalid(f"{model_dir}: cannot load a causal LM ({arch.class_name}): {exc}") from exc
    assert model is not None
    log.info("%s: attention implementation %s (tried %s)", arch.class_name, attention_implementation(model), order)
    model.config.use_cache = False
    if quantize is not Quantization.NONE:  # QLoRA: PEFT's preparation enables checkpointing itself
        model = quantization.prepare_for_training(model, gradient_checkpointing)
    elif gradient_checkpointing:
        # Non-reentrant: reentrant checkpointing with frozen base weights is up to 2x slower.
        model.gradient_checkpointing_enable(  # type: ignore[no-untyped-call]
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    return model


def _is_attention_refusal(exc: Exception) -> bool:
    text = str(exc).lower()
    return "attention" in text or "flash" in text or "sdpa" in text


def attention_implementation(model: Any) -> str:
    """The attention implementation a loaded model runs with."""
    config = getattr(model, "config", None)
    return str(getattr(config, "_attn_implementation", None) or "eager")


def unpacked_attention(model: Any) -> str:
    """For a run whose rows are padded, not packed: SDPA per packed row would only ever take its
    plain-SDPA path, so switch to plain SDPA and let the manifest name what really runs."""
    if attention_implementation(model) == architectures.PACKED_SDPA:
        model.set_attn_implementation(architectures.SDPA)
    return attention_implementation(model)


# PEFT refuses LoRA on `out_proj`/`conv1d` in these Mamba families (peft.tuners.tuners_utils.
# _check_lora_target_modules_mamba): the fused Mamba kernels read those weights directly, so an adapter there
# would be silently skipped on GPU. all-linear leaves them out instead of failing the run.
MAMBA_FROZEN_MODULES = {
    model_type: frozenset({"out_proj", "conv1d"})
    for model_type in ("falcon_h1", "mamba", "mamba2", "falcon_mamba", "nemotron_h")
}


def all_linear_targets(model: torch.nn.Module, called: set[str] | None = None) -> list[str]:
    """What `targetModules: [all-linear]` adapts: every nn.Linear (and GPT-2 Conv1D) of the model, except

    - the output head, as PEFT's own all-linear does;
    - everything inside a sparse-MoE block (a module with an `experts` child): the router (adapting it
      shifts which experts see which tokens), the routed experts (fused 3D parameters in transformers 5,
      which PEFT adapts only without dropout or DoRA, and only for the families in its v4->v5 conversion
      table) and the shared experts (PEFT's conversion rewrites any target named gate_proj/up_proj/down_proj
      of those families into the fused experts, so they cannot be targeted reliably);
    - the Mamba modules PEFT refuses (MAMBA_FROZEN_MODULES);
    - layers whose weight is tied to another module's (Zamba's shared blocks): each copy would get its own
      adapter, and merging both into the one shared weight changes what every copy computes;
    - with `called` (linear_modules_called), layers the forward pass never calls: the model reads their
      weight directly (Mamba's dt_proj), so an adapter there would never be applied.

    Returned as leaf names when those select exactly these modules (the usual case: a short, portable
    adapter_config.json), else as full module names. Resolved here rather than by PEFT's "all-linear", because
    PEFT 0.21 on transformers 5 adds the MoE routers and experts to "all-linear" (and exclude_modules does not
    take them out again).
    """
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings() if isinstance(model, PreTrainedModel) else None  # type: ignore[no-untyped-call]
    frozen = MAMBA_FROZEN_MODULES.get(str(getattr(getattr(model, "config", None), "model_type", "")), frozenset())
    moe_blocks = [name for name, module in model.named_modules() if "experts" in dict(module.named_children())]
    linear = {
        name: m for name, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D)) and m is not head
    }
    weight_users = Counter(id(module.weight) for module in linear.values())
    targets = [
        name
        for name, module in linear.items()
        if name.rsplit(".", 1)[-1] not in frozen
        and not any(name.startswith(f"{block}.") for block in moe_blocks)
        and weight_users[id(module.weight)] == 1
        and (called is None or name in called)
    ]
    leaves = sorted({name.rsplit(".", 1)[-1] for name in targets})
    # PEFT matches a leaf name against every module whose name ends with it, Linear or not
    if {name for name, _ in model.named_modules() if name.rsplit(".", 1)[-1] in leaves} == set(targets):
        return leaves
    return targets


@torch.no_grad()
def linear_modules_called(model: torch.nn.Module, tokens: int = 8) -> set[str]:
    """Names of the Linear layers one short forward pass calls (a few milliseconds, on the model's device)."""
    called: set[str] = set()
    hooks = [
        module.register_forward_hook(lambda *_, name=name: called.add(name))
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    ]
    config: Any = model.config
    vocab = int(config.get_text_config().vocab_size)
    device = next(model.parameters()).device
    was_training = model.training
    try:
        model.eval()
        model(input_ids=(torch.arange(1, tokens + 1, device=device) % vocab)[None], use_cache=False)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return called


def lora_config(spec: LoRASpec, all_linear: list[str] | None = None) -> LoraConfig:
    """PEFT's LoraConfig for the spec; all-linear becomes `all_linear` when given (all_linear_targets)."""
    targets: str | list[str] = ALL_LINEAR if spec.target_modules == [ALL_LINEAR] else list(spec.target_modules)
    if targets == ALL_LINEAR and all_linear is not None:
        targets = all_linear
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
    all_linear = None
    if spec.target_modules == [ALL_LINEAR]:
        try:
            called = linear_modules_called(model)
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise UnsupportedModel(
                f"{type(model).__name__}: a forward pass fails: {type(exc).__name__}: {exc}"
            ) from exc
        all_linear = all_linear_targets(model, called)
    try:
        peft_model = get_peft_model(model, lora_config(spec, all_linear))
    except ValueError as exc:
        raise InvalidSpec(f"lora.targetModules: {exc}") from exc
    return peft_model


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
