"""kubetune's vLLM check against vLLM's own loader code, where vLLM is importable (skipped otherwise).

vLLM is not a kubetune dependency (a 336 MB CUDA wheel). To run this on a CPU machine, unpack the
wheel's Python files and the few pure-Python modules its LoRA imports need (docs/serving.md,
"Checking against vLLM itself"), then:

    PYTHONPATH=/tmp/vllmsrc:/tmp/vllmdeps pytest tests/integration/test_vllm_loader_differential.py

For each adapter, PEFT-saved on a tiny model of a family, vLLM's loader runs as its worker does
(worker_manager._load_adapter) up to the GPU: PEFTHelper.from_local_dir + validate_legal with the
`--max-lora-rank` kubetune's snippet passes, then LoRAModel.from_local_checkpoint on the CPU with
the expected modules built from the vLLM model class's packed_modules_mapping and
embedding_modules. kubetune's check must say "compatible" exactly when vLLM loads the adapter.
"""

from __future__ import annotations

import importlib
import os
import shlex
from pathlib import Path
from typing import Any

import pytest

# vLLM resolves its platform once, lazily; on a machine without its CUDA kernels only the CPU one
# can be resolved, and its CLI parser needs one.
os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
pytest.importorskip("vllm.lora.lora_model", reason="vLLM is not importable here")

import torch

from kubetune_api.serving import serving_snippets
from kubetune_trainer.serving import check_adapter_dir
from model_zoo import build_tiny_model

# family -> (vLLM module, class, the class's LinearBase layer names: QKVParallelLinear qkv_proj,
# RowParallelLinear o_proj, MergedColumnParallelLinear gate_up_proj, RowParallelLinear down_proj)
VLLM_CLASSES = {
    "llama": ("llama", "LlamaForCausalLM"),
    "mistral": ("mistral", "MistralForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
    "qwen3": ("qwen3", "Qwen3ForCausalLM"),
    "gemma": ("gemma", "GemmaForCausalLM"),
    "gemma2": ("gemma2", "Gemma2ForCausalLM"),
    "gemma3_text": ("gemma3", "Gemma3ForCausalLM"),
    "granite": ("granite", "GraniteForCausalLM"),
    "phi3": ("phi3", "Phi3ForCausalLM"),
}
LINEAR_LAYERS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PHI3_TARGETS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]


def vllm_load(adapter: Path, family: str, max_lora_rank: int) -> str | None:
    """None when vLLM's loader takes the adapter, else its error."""
    import vllm.lora.lora_model
    from vllm.config.lora import LoRAConfig
    from vllm.lora.lora_model import LoRAModel
    from vllm.lora.peft_helper import PEFTHelper

    # Pinning host memory (for the copy to the GPU) needs an accelerator; accepting the adapter does not.
    vllm.lora.lora_model.PIN_MEMORY = False  # type: ignore[attr-defined]

    module, name = VLLM_CLASSES[family]
    cls = getattr(importlib.import_module(f"vllm.model_executor.models.{module}"), name)
    packed: dict[str, list[str]] = dict(getattr(cls, "packed_modules_mapping", {}) or {})
    supported = [*LINEAR_LAYERS, *(getattr(cls, "embedding_modules", {}) or {})]
    expected = {m for s in supported for m in packed.get(s, [s])}
    try:
        helper = PEFTHelper.from_local_dir(str(adapter), None)
        helper.validate_legal(LoRAConfig(max_lora_rank=max_lora_rank))  # type: ignore[arg-type]
        LoRAModel.from_local_checkpoint(
            str(adapter), expected, helper, lora_model_id=1, device="cpu", dtype=torch.float16, model_vocab_size=None
        )
    except (ValueError, NotImplementedError, RuntimeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vllm-diff")
    return {family: build_tiny_model(family, root / family) for family in VLLM_CLASSES}


def save(model_dir: Path, out: Path, **lora: Any) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(model_dir))
    get_peft_model(base, LoraConfig(**{"r": 4, "lora_alpha": 8, **lora})).save_pretrained(str(out))
    return out


CASES = [
    *((family, "all-linear", {}) for family in VLLM_CLASSES),
    ("llama", "dora", {"use_dora": True}),
    ("llama", "rank-600", {"r": 600}),
    ("llama", "modules-to-save", {"modules_to_save": ["lm_head"]}),
    ("llama", "bias", {"bias": "all"}),
    ("llama", "lm-head", {"target_modules": [*LLAMA_TARGETS, "lm_head"]}),
    ("qwen2", "lm-head", {"target_modules": [*LLAMA_TARGETS, "lm_head"]}),
    ("mistral", "lm-head", {"target_modules": [*LLAMA_TARGETS, "lm_head"]}),
]


@pytest.mark.parametrize(("family", "case", "lora"), CASES, ids=[f"{f}-{c}" for f, c, _ in CASES])
def test_kubetune_agrees_with_vllms_loader(
    models: dict[str, Path], tmp_path: Path, family: str, case: str, lora: dict[str, Any]
) -> None:
    targets = PHI3_TARGETS if family == "phi3" else LLAMA_TARGETS
    adapter = save(models[family], tmp_path / "a", **{"target_modules": targets, **lora})
    check = check_adapter_dir(adapter, family)
    refusal = vllm_load(adapter, family, check.max_lora_rank or 512)
    print(f"{family} {case}: vLLM {'loads' if refusal is None else refusal}; kubetune {check.to_manifest()}")
    if case == "lm-head":
        # kubetune refuses every head adapter (docs/serving.md); vLLM takes it on some model classes only
        assert check.compatible is False
    elif refusal is None:
        assert check.compatible is True, check.problems
    else:
        assert check.compatible is False, refusal


def test_head_adapters_load_only_where_the_class_declares_them(models: dict[str, Path], tmp_path: Path) -> None:
    """Why kubetune refuses lm_head targets everywhere: vLLM's answer depends on the model class."""
    results = {}
    for family in ("llama", "qwen2", "mistral"):
        adapter = save(models[family], tmp_path / family, target_modules=[*LLAMA_TARGETS, "lm_head"])
        results[family] = vllm_load(adapter, family, 8)
    assert results["llama"] is None
    assert results["qwen2"] is not None and "lm_head" in results["qwen2"]
    assert results["mistral"] is not None and "lm_head" in results["mistral"]


def vllm_cli(serve_line: str) -> Any:
    """`vllm serve MODEL ARGS...` parsed by vLLM's own argument parser (MODEL is its --model)."""
    from vllm.entrypoints.common.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    words = shlex.split(serve_line)
    assert words[:2] == ["vllm", "serve"], serve_line
    return make_arg_parser(FlexibleArgumentParser()).parse_args(["--model", *words[2:]])


def test_vllms_own_cli_parser_takes_the_snippets() -> None:
    snippets = serving_snippets("support.bot", "s3://models/m/", "s3://artifacts/run/", 24, merged=True)
    assert snippets.vllm_command is not None and snippets.merged_vllm_command is not None
    args = vllm_cli(snippets.vllm_command.splitlines()[-1])
    assert args.model == "./base-model" and args.enable_lora and args.max_lora_rank == 32
    assert [(m.name, m.path) for m in args.lora_modules] == [("support-bot", "./adapters/support-bot")]
    merged = vllm_cli(snippets.merged_vllm_command.splitlines()[-1])
    assert merged.model == "./models/support-bot" and not merged.enable_lora
    assert merged.served_model_name == ["support-bot"]


def test_vllm_refuses_a_max_lora_rank_that_is_not_one_of_its_choices(capsys: pytest.CaptureFixture[str]) -> None:
    """Why the snippet rounds r up to a choice: `--max-lora-rank 24` is an argument error."""
    with pytest.raises(SystemExit):
        vllm_cli("vllm serve ./base-model --enable-lora --max-lora-rank 24")
    assert "argument --max-lora-rank: invalid choice: 24 (choose from 1, 8, 16, 32, 64, 128, 256, 320, 512)" in (
        capsys.readouterr().err
    )


def test_an_adapter_path_with_a_comma_goes_as_json() -> None:
    """vLLM reads `name=path` only without a comma; else --lora-modules is JSON."""
    snippets = serving_snippets("run", "file:///models/m/", "file:///runs/a,b/", 8)
    args = vllm_cli((snippets.vllm_command or "").splitlines()[-1])
    assert [(m.name, m.path) for m in args.lora_modules] == [("run", "/runs/a,b")]
