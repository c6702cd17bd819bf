"""Check a saved adapter against vLLM's LoRA loader, from its files alone (no torch, no vLLM).

Reads adapter_config.json and the tensor names in adapter_model.safetensors' header (the
8-byte little-endian length, then that much JSON), and applies kubetune_api.serving's rules.
The outcome goes into manifest.json as `serving.vllm` and into the model card.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune_api.serving import (
    VLLM_LORA_MODULES,
    ServingSnippets,
    check_vllm_adapter,
    serving_snippets,
    vllm_max_lora_rank,
)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_HEADER_LIMIT = 100 * 2**20  # safetensors itself refuses headers above 100 MB


@dataclass(frozen=True)
class VllmCheck:
    """Whether vLLM's LoRA loader accepts the adapter, and why not."""

    problems: list[str]
    rank: int  # adapter_config.json's r; 0 when unreadable
    notes: list[str] = field(default_factory=list)
    targets_checked: bool = True  # False: the family is not in kubetune's table of vLLM LoRA layers

    @property
    def compatible(self) -> bool | None:
        """False: vLLM refuses it; True: it passes every rule; None: no rule broken, target names unchecked."""
        if self.problems:
            return False
        return True if self.targets_checked else None

    @property
    def max_lora_rank(self) -> int | None:
        """The `--max-lora-rank` vLLM must start with to load this adapter."""
        return vllm_max_lora_rank(self.rank) if self.rank > 0 else None

    def to_manifest(self) -> dict[str, Any]:
        return {
            "compatible": self.compatible,
            "problems": self.problems,
            "maxLoraRank": self.max_lora_rank,
            "notes": self.notes,
        }


def safetensors_names(path: Path) -> list[str]:
    """The tensor names in a safetensors file's header, without reading any tensor."""
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
        (length,) = struct.unpack("<Q", head)
        if length > _HEADER_LIMIT:
            raise ValueError(f"{path}: safetensors header of {length} bytes is larger than 100 MB")
        header = json.loads(f.read(length))
    return sorted(name for name in header if name != "__metadata__")


def check_adapter_dir(adapter_dir: Path, model_type: str | None) -> VllmCheck:
    """vLLM's loader rules applied to the adapter saved in `adapter_dir` for a `model_type` base."""
    config_path, weights_path = adapter_dir / ADAPTER_CONFIG, adapter_dir / ADAPTER_WEIGHTS
    missing = [p.name for p in (config_path, weights_path) if not p.is_file()]
    if missing:
        return VllmCheck([f"{adapter_dir}: {', '.join(missing)} missing; vLLM loads only these files"], 0)
    try:
        config = json.loads(config_path.read_text())
        names = safetensors_names(weights_path)
    except (ValueError, OSError) as exc:
        return VllmCheck([f"{adapter_dir}: unreadable adapter: {exc}"], 0)
    known = model_type in VLLM_LORA_MODULES
    notes = (
        []
        if known
        else [
            f"model_type {model_type!r} is not in kubetune's table of vLLM LoRA layers: "
            "target module names were not checked"
        ]
    )
    return VllmCheck(check_vllm_adapter(config, names, model_type), int(config.get("r") or 0), notes, known)


@dataclass(frozen=True)
class ServingHandoff:
    """The loader check of the saved adapter and the snippets that serve it."""

    check: VllmCheck
    snippets: ServingSnippets


def serving_handoff(
    adapter_dir: Path,
    model_type: str | None,
    *,
    job: str,
    base_model_uri: str,
    adapter_uri: str,
    storage_endpoint: str | None,
    merged: bool,
) -> ServingHandoff:
    """Check the adapter saved in `adapter_dir` and build the snippets for its published copy."""
    check = check_adapter_dir(adapter_dir, model_type)
    snippets = serving_snippets(
        job,
        base_model_uri,
        adapter_uri,
        check.rank,
        storage_endpoint=storage_endpoint,
        merged=merged,
        problems=check.problems,
    )
    return ServingHandoff(check, snippets)
