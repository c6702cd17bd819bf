"""What kubetune can train, decided from config.json and the weight files' headers alone.

Preflight (CPU, no weights downloaded) and training ask the same questions here, so a model
that training would refuse is refused before any GPU is requested, for the same reason:

    read_config        config.json is there, is JSON, and names a model_type   (else ModelInvalid)
    classify           transformers knows the model_type and has a causal-LM class for it,
                       and kubetune does not refuse it                          (else UnsupportedModel)
    attention_order    the attention implementations to try, best first, for this class and device
    weights_problem    the weight files' tensors have the shapes the config implies (else ModelInvalid)

Whether packed rows stay apart is not decided here: that is a property of the loaded model's
forward pass, checked at run time by `packing_check`.
"""

from __future__ import annotations

import importlib.util
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import transformers
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES  # type: ignore[attr-defined]
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from kubetune_trainer.errors import ModelInvalid, UnsupportedModel

# Architectures transformers ships that kubetune refuses, with the cause (docs/models.md).
# Each entry was seen failing in tests/integration/test_model_families.py, not guessed.
REFUSED: dict[str, str] = {
    "inkling2_loop_text": (
        "a published adapter would not reload: PEFT 0.21 maps the adapter keys of its dynamic short "
        "convolutions (sconv.weight_proj) through transformers' checkpoint conversion on load and drops them, "
        "so the reloaded model differs from the trained one"
    ),
}

# Best first. flash_attention_2 needs CUDA and the flash-attn package; flex attention goes
# through torch.compile, which on CPU is slow to start and fragile, so it is a GPU choice only.
FLASH, SDPA, FLEX, EAGER = "flash_attention_2", "sdpa", "flex_attention", "eager"
# SDPA run per packed row (packed_attention registers it under this name); plain SDPA otherwise.
PACKED_SDPA = "kubetune_packed_sdpa"


@dataclass(frozen=True)
class Architecture:
    model_type: str
    class_name: str  # the causal-LM class transformers maps model_type to
    supports: frozenset[str]  # attention implementations the class declares


def read_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    if not path.is_file():
        raise ModelInvalid(f"{path}: no config.json: baseModel.uri must be a Hugging Face model folder")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelInvalid(f"{path}: cannot read the model config: {exc}") from exc
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ModelInvalid(f"{path}: no model_type: this is not a transformers model config")
    return config


def classify(model_dir: Path) -> Architecture:
    """The architecture of the model in `model_dir`, or the reason kubetune cannot train it."""
    path = model_dir / "config.json"
    model_type = str(read_config(model_dir)["model_type"])
    if model_type not in CONFIG_MAPPING_NAMES:
        raise UnsupportedModel(
            f"{path}: model_type {model_type!r} is not known to transformers {transformers.__version__} "
            "in this trainer image; a newer trainer image may support it"
        )
    if model_type in REFUSED:
        raise UnsupportedModel(f"{path}: model_type {model_type!r} cannot be trained: {REFUSED[model_type]}")
    class_name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    if class_name is None:
        raise UnsupportedModel(
            f"{path}: model_type {model_type!r} has no causal-LM class in transformers "
            f"{transformers.__version__}; kubetune trains causal (decoder) language models only"
        )
    cls = getattr(transformers, class_name)
    supports = {EAGER}
    for name, flag in ((SDPA, "_supports_sdpa"), (FLEX, "_supports_flex_attn"), (FLASH, "_supports_flash_attn")):
        if getattr(cls, flag, False):
            supports.add(name)
    # is_backend_compatible: the class dispatches attention through transformers' AttentionInterface
    # by name. Others (Falcon, ...) compare the name with "sdpa": under another name they would fail
    # to load or silently run eager, so they get plain SDPA.
    if SDPA in supports and getattr(cls, "is_backend_compatible", lambda: False)():
        supports.add(PACKED_SDPA)
    return Architecture(model_type, class_name, frozenset(supports))


def attention_order(
    supports: frozenset[str], device_type: str, flash_installed: bool, packed: bool = False
) -> list[str]:
    """The implementations to try, best first. Eager always ends the list: a load never fails
    because one implementation is missing.

    `packed`: rows may be packed. Then, where SDPA would be the choice, SDPA per packed row comes
    first: plain SDPA computes a packed sequence's attention over its whole length, mostly masked.
    Not where flash attention is loaded: its varlen kernels already work per row."""
    cuda = device_type == "cuda"
    flash = cuda and flash_installed and FLASH in supports
    wanted = [
        (FLASH, flash),  # varlen kernels: packed rows without a mask
        (PACKED_SDPA, packed and not flash and PACKED_SDPA in supports),
        (SDPA, SDPA in supports),
        (FLEX, cuda and FLEX in supports),
    ]
    return [name for name, ok in wanted if ok] + [EAGER]


def flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


# -- weights against the config (headers only: preflight downloads no weights) ------------------

SAFETENSORS_HEADER_LIMIT = 100 * 1024 * 1024  # the format's own cap on the JSON header


def safetensors_shapes(header: bytes) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors header (the 8-byte length, then JSON)."""
    (length,) = struct.unpack("<Q", header[:8])
    meta = json.loads(header[8 : 8 + length])
    return {name: tuple(info["shape"]) for name, info in meta.items() if name != "__metadata__"}


def header_length(prefix: bytes) -> int:
    """Bytes to read for the whole header, from its first 8 bytes."""
    (length,) = struct.unpack("<Q", prefix[:8])
    if length > SAFETENSORS_HEADER_LIMIT:
        raise ValueError(f"header of {length} bytes is larger than safetensors allows")
    return 8 + int(length)


def expected_shapes(model_dir: Path) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of the model config.json describes, built on the meta device (no memory)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        cfg = AutoConfig.from_pretrained(str(model_dir))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelInvalid(f"{model_dir / 'config.json'}: transformers cannot read it: {exc}") from exc
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)  # type: ignore[no-untyped-call]
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def weights_problem(
    expected: Mapping[str, tuple[int, ...]], files: Mapping[str, Mapping[str, tuple[int, ...]]]
) -> str | None:
    """Why the weight files do not fit the config, naming the file and tensor; None when they do.

    Only names present on both sides are compared: transformers renames or fuses some
    checkpoint tensors on load (MoE experts, legacy prefixes, whole checkpoint layouts such as
    Inkling's), and tied heads are absent. So files that share no name with the model are not
    refused here; loading them for training still fails with ModelInvalid if they do not fit.
    """
    if not files:
        return "no *.safetensors weight files (kubetune loads safetensors only)"
    for file, shapes in sorted(files.items()):
        for name, shape in sorted(shapes.items()):
            want = expected.get(name)
            if want is not None and tuple(want) != tuple(shape):
                return (
                    f"{file}: tensor {name} has shape {list(shape)}, but config.json implies {list(want)}; "
                    "the weights belong to a different model size or variant"
                )
    return None
