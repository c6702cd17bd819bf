"""vLLM's LoRA-loader rules against adapters PEFT really saved (no training: save_pretrained only).

The adapter that `kubetune run` publishes is checked for every family in
tests/integration/test_model_families.py (test_published_adapter_meets_vllm_loader_constraints);
here each feature vLLM refuses is saved by PEFT on a tiny model and must be named by the check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kubetune_trainer.serving import check_adapter_dir
from model_zoo import build_tiny_model

LLAMA_ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serving-models")
    return {family: build_tiny_model(family, root / family) for family in ("llama", "qwen2", "phi3")}


def save_adapter(model_dir: Path, out: Path, **lora: Any) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(model_dir))
    peft_model = get_peft_model(base, LoraConfig(**{"r": 4, "lora_alpha": 8, **lora}))
    peft_model.save_pretrained(str(out), safe_serialization=True)
    return out


PLAIN = [
    ("llama", LLAMA_ALL_LINEAR),
    ("qwen2", LLAMA_ALL_LINEAR),
    ("phi3", ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]),
]


@pytest.mark.parametrize(("family", "targets"), PLAIN, ids=[f for f, _ in PLAIN])
def test_a_plain_lora_loads(tiny_models: dict[str, Path], tmp_path: Path, family: str, targets: list[str]) -> None:
    check = check_adapter_dir(save_adapter(tiny_models[family], tmp_path / "a", target_modules=targets), family)
    assert check.problems == [] and check.notes == [] and check.max_lora_rank == 8


REFUSED = [
    ("dora", {"use_dora": True}, ["use_dora: vLLM does not load DoRA adapters", "a DoRA magnitude vector"]),
    ("rank-600", {"r": 600}, ["r=600: above 512, the largest --max-lora-rank vLLM accepts"]),
    (
        "modules-to-save",
        {"modules_to_save": ["lm_head"]},
        ["modules_to_save=['lm_head']: vLLM cannot load", "adapter_model.safetensors holds base_model.model.lm_head"],
    ),
    ("lm-head-target", {"target_modules": [*LLAMA_ALL_LINEAR, "lm_head"]}, ["lm_head: a LoRA on the embeddings"]),
]


@pytest.mark.parametrize(("changes", "expected"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_each_refused_feature_is_named(
    tiny_models: dict[str, Path], tmp_path: Path, changes: dict[str, Any], expected: list[str]
) -> None:
    lora = {"target_modules": LLAMA_ALL_LINEAR, **changes}
    check = check_adapter_dir(save_adapter(tiny_models["llama"], tmp_path / "a", **lora), "llama")
    assert not check.compatible
    assert len(check.problems) == len(expected), check.problems
    for problem, start in zip(check.problems, expected, strict=True):
        assert start in problem, check.problems


def test_separate_projections_on_a_fused_family_are_named(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """A Qwen2 adapter offered to a Phi-3 base: vLLM's phi3 model has no q_proj to put it on."""
    adapter = save_adapter(tiny_models["qwen2"], tmp_path / "a", target_modules=LLAMA_ALL_LINEAR)
    (problem,) = check_adapter_dir(adapter, "phi3").problems
    assert problem.startswith("target modules ['gate_proj', 'k_proj', 'q_proj', 'up_proj', 'v_proj']: vLLM's phi3")
