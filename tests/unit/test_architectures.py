"""What kubetune can train, from config.json and weight headers alone; and the run-time packing check."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from kubetune_api.protocol import FailureReason
from kubetune_trainer import architectures
from kubetune_trainer.architectures import EAGER, FLASH, FLEX, SDPA, attention_order, classify, weights_problem
from kubetune_trainer.errors import ModelInvalid, UnsupportedModel
from kubetune_trainer.packing_check import check_packing, tolerance_for

TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}


def model_dir(tmp_path: Path, config: Any) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    return tmp_path


# -- classify: refused before any GPU, with the file named -----------------------------------------


def test_a_llama_config_is_classified_with_the_attention_its_class_supports(tmp_path: Path) -> None:
    arch = classify(model_dir(tmp_path, {"model_type": "llama"}))
    assert (arch.model_type, arch.class_name) == ("llama", "LlamaForCausalLM")
    assert {SDPA, EAGER, FLEX, FLASH} <= arch.supports


def test_gemma2_has_no_sdpa_so_eager_is_its_cpu_choice(tmp_path: Path) -> None:
    arch = classify(model_dir(tmp_path, {"model_type": "gemma2"}))
    assert SDPA not in arch.supports
    assert attention_order(arch.supports, "cpu", flash_installed=False) == [EAGER]
    assert attention_order(arch.supports, "cuda", flash_installed=True) == [FLASH, FLEX, EAGER]


def test_attention_order_is_best_first_and_always_ends_with_eager() -> None:
    everything = frozenset({FLASH, SDPA, FLEX, EAGER})
    assert attention_order(everything, "cuda", flash_installed=True) == [FLASH, SDPA, FLEX, EAGER]
    assert attention_order(everything, "cuda", flash_installed=False) == [SDPA, FLEX, EAGER]
    assert attention_order(everything, "cpu", flash_installed=True) == [SDPA, EAGER], "flex and FA2 are GPU-only"
    assert attention_order(frozenset({EAGER}), "cuda", flash_installed=True) == [EAGER]


def test_missing_config_json_is_a_model_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(ModelInvalid, match=r"config\.json: no config\.json"):
        classify(tmp_path)


@pytest.mark.parametrize("text", ["{not json", '{"hidden_size": 8}', "[1, 2]"])
def test_unreadable_or_typeless_config_is_a_model_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(ModelInvalid, match=r"config\.json: (cannot read the model config|no model_type)"):
        classify(model_dir(tmp_path, text))


def test_unknown_model_type_is_unsupported_not_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModel, match=r"config\.json: model_type 'llama99' is not known to transformers") as e:
        classify(model_dir(tmp_path, {"model_type": "llama99"}))
    assert e.value.reason is FailureReason.UNSUPPORTED_MODEL and not e.value.user_error
    assert e.value.exit_code == 30


def test_a_model_type_without_a_causal_lm_class_is_unsupported(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModel, match="'t5' has no causal-LM class"):
        classify(model_dir(tmp_path, {"model_type": "t5"}))


def test_a_refused_family_names_its_cause(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(architectures.REFUSED, "llama", "a test cause")
    with pytest.raises(UnsupportedModel, match="'llama' cannot be trained: a test cause"):
        classify(model_dir(tmp_path, {"model_type": "llama"}))


# -- weights against the config ------------------------------------------------------------------------


def safetensors_header(shapes: dict[str, list[int]]) -> bytes:
    meta = {name: {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]} for name, shape in shapes.items()}
    body = json.dumps(meta).encode()
    return struct.pack("<Q", len(body)) + body


def test_header_shapes_round_trip() -> None:
    header = safetensors_header({"a.weight": [4, 2]})
    assert architectures.header_length(header[:8]) == len(header)
    assert architectures.safetensors_shapes(header) == {"a.weight": (4, 2)}


def test_weights_of_another_size_are_refused_naming_file_and_tensor(tmp_path: Path) -> None:
    expected = architectures.expected_shapes(model_dir(tmp_path, {"model_type": "llama", **TINY, "vocab_size": 64}))
    assert expected["model.embed_tokens.weight"] == (64, 32)
    good = {"model.safetensors": {"model.embed_tokens.weight": (64, 32)}}
    assert weights_problem(expected, good) is None
    bad = {"model.safetensors": {"model.embed_tokens.weight": (64, 48)}}
    problem = weights_problem(expected, bad)
    assert problem is not None and problem.startswith("model.safetensors: tensor model.embed_tokens.weight has shape")
    assert "[64, 48]" in problem and "[64, 32]" in problem
    # names transformers converts on load are not ours to judge: training's load decides
    assert weights_problem(expected, {"x.safetensors": {"foo": (1,)}}) is None
    assert "no *.safetensors" in str(weights_problem(expected, {}))


# -- the packing self-test on real architectures ---------------------------------------------------


def tiny_model(model_type: str, **extra: Any) -> Any:
    config = AutoConfig.for_model(model_type, vocab_size=128, **TINY, **extra)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()


def tiny_jamba() -> Any:
    """Two layers: one Mamba layer (its recurrent state crosses packed rows), one attention layer."""
    return tiny_model(
        "jamba",
        num_key_value_heads=2,
        attn_layer_period=2,
        attn_layer_offset=1,
        expert_layer_period=99,
        use_mamba_kernels=False,
    )


def test_packing_check_passes_for_attention_models() -> None:
    check = check_packing(tiny_model("llama", num_key_value_heads=2), 128, "cpu")
    assert check.isolated, check
    assert check.leak < 1e-5 and check.content_leak == 0.0


def test_packing_check_catches_a_real_leaking_architecture() -> None:
    # Jamba interleaves Mamba layers: their recurrent state runs across the packed boundary.
    jamba = tiny_jamba()
    check = check_packing(jamba, 128, "cpu")
    assert not check.isolated, check
    assert "packed rows see each other" in check.describe()


def test_packing_check_leaves_the_model_in_training_mode_if_it_was() -> None:
    model = tiny_model("llama", num_key_value_heads=2).train()
    check_packing(model, 128, "cpu")
    assert model.training


def test_half_precision_gets_a_looser_tolerance_than_fp32() -> None:
    assert tolerance_for(torch.float32) < tolerance_for(torch.bfloat16)


def test_in_bf16_the_content_comparison_still_separates_isolated_from_leaking() -> None:
    # Packed-vs-alone differs by kernel noise in half precision; swapping the row before gives
    # bit-identical results when rows are isolated, so leaks stay visible in bf16 too.
    llama = tiny_model("llama", num_key_value_heads=2).to(torch.bfloat16)
    isolated = check_packing(llama, 128, "cpu")
    assert isolated.isolated and isolated.content_leak == 0.0, isolated
    jamba = tiny_jamba().to(torch.bfloat16)
    leaking = check_packing(jamba, 128, "cpu")
    assert not leaking.isolated and leaking.content_leak > 1e-3, leaking


def test_a_model_whose_forward_pass_fails_is_unsupported_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    from kubetune_api.spec import LoRASpec
    from kubetune_trainer.modeling import add_lora

    model = tiny_model("llama", num_key_value_heads=2)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("The size of tensor a (4) must match the size of tensor b (8)")

    monkeypatch.setattr(model.model, "forward", broken)
    with pytest.raises(UnsupportedModel, match="LlamaForCausalLM: a forward pass fails: RuntimeError: The size"):
        add_lora(model, LoRASpec())
