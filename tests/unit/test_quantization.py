"""lora.quantization / useDora / useRslora: the spec on the wire, the mapping, and the trainer's rules.

The trainer runs (and the CPU QLoRA training) are in tests/integration/test_qlora.py.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from kubetune_api.spec import LoRASpec, Quantization
from kubetune_api.trainer_config import TrainerConfig, load_manifest, trainer_config_from_job
from kubetune_trainer import quantization
from kubetune_trainer.cli.kubetune import read_manifest
from kubetune_trainer.errors import InvalidSpec
from kubetune_trainer.modeling import lora_config

MANIFEST: dict[str, Any] = {
    "apiVersion": "kubetune.io/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "qlora"},
    "spec": {
        "baseModel": {"uri": "s3://models/llama/"},
        "dataset": {"train": "s3://data/train.jsonl"},
        "output": {"uri": "s3://runs/qlora/"},
    },
}


def with_lora(**lora: Any) -> dict[str, Any]:
    data = copy.deepcopy(MANIFEST)
    data["spec"]["lora"] = lora
    return data


# -- spec and mapping --------------------------------------------------------------------------------


def test_defaults_are_plain_lora() -> None:
    spec = LoRASpec()
    assert (spec.quantization, spec.use_dora, spec.use_rslora) == (Quantization.NONE, False, False)


@pytest.mark.parametrize("mode", ["none", "4bit", "8bit"])
def test_wire_names_reach_the_trainer_config_and_round_trip(mode: str) -> None:
    job = load_manifest(with_lora(quantization=mode, useDora=True, useRslora=True))
    config = trainer_config_from_job(job)
    assert config.lora.quantization == Quantization(mode)
    assert (config.lora.use_dora, config.lora.use_rslora) == (True, True)
    assert TrainerConfig.model_validate_json(config.to_json()) == config  # trainer.json keeps them
    assert job.spec.lora.model_dump(by_alias=True)["quantization"] == mode


def test_yaml_unquoted_4bit_is_the_string() -> None:
    """`quantization: 4bit` in YAML is a string, not a number, so users need no quotes."""
    document = yaml.safe_load("lora: {quantization: 4bit, useDora: true}")
    assert LoRASpec.model_validate(document["lora"]).quantization is Quantization.FOUR_BIT


@pytest.mark.parametrize(
    ("lora", "line"),
    [
        ({"quantization": "nf4"}, "spec.lora.quantization: Input should be 'none', '4bit' or '8bit', got 'nf4'"),
        ({"useDora": "maybe"}, "spec.lora.useDora: Input should be a valid boolean"),
        ({"useRsLora": True}, "spec.lora.useRsLora: unknown field; did you mean useRslora?"),
    ],
    ids=["quantization-value", "use-dora-type", "use-rslora-typo"],
)
def test_bad_values_name_the_field(lora: dict[str, Any], line: str, tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(with_lora(**lora)))
    with pytest.raises(InvalidSpec) as error:
        read_manifest(path)
    assert line in str(error.value)


def test_peft_config_carries_dora_and_rslora() -> None:
    config = lora_config(LoRASpec(useDora=True, useRslora=True))
    assert (config.use_dora, config.use_rslora) == (True, True)
    plain = lora_config(LoRASpec())
    assert (plain.use_dora, plain.use_rslora) == (False, False)


# -- the trainer's rules -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "dora", "device"),
    [
        ("none", False, "cpu"),
        ("none", True, "cpu"),
        ("4bit", False, "cpu"),
        ("4bit", True, "cpu"),
        ("8bit", False, "cpu"),
        ("4bit", True, "cuda"),
        ("8bit", True, "cuda"),  # PEFT's CPU-only dequantisation branch is what breaks it (tests/gpu checks this)
    ],
)
def test_what_trains(mode: str, dora: bool, device: str) -> None:
    pytest.importorskip("bitsandbytes")
    assert quantization.quantization_problem(LoRASpec(quantization=mode, useDora=dora), device) is None


def test_dora_on_8bit_on_cpu_is_refused_naming_use_dora() -> None:
    pytest.importorskip("bitsandbytes")
    problem = quantization.quantization_problem(LoRASpec(quantization="8bit", useDora=True), "cpu")
    assert problem is not None and problem.startswith("lora.useDora: ") and "on CPU" in problem
    with pytest.raises(InvalidSpec, match=r"lora\.useDora"):
        quantization.check(LoRASpec(quantization="8bit", useDora=True), "cpu")


@pytest.mark.parametrize("mode", ["4bit", "8bit"])
def test_missing_bitsandbytes_is_refused_naming_quantization(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        quantization.importlib.util,
        "find_spec",
        lambda name, package=None: None if name == "bitsandbytes" else real(name, package),
    )
    for device in ("cpu", "cuda"):
        problem = quantization.quantization_problem(LoRASpec(quantization=mode, useDora=True), device)
        assert problem is not None and problem.startswith(f"lora.quantization: {mode} needs bitsandbytes")
    assert quantization.quantization_problem(LoRASpec(), "cpu") is None  # plain LoRA never needs it


def test_bitsandbytes_config_is_nf4_double_quant_with_bf16_compute_on_gpu() -> None:
    gpu = quantization.from_pretrained_kwargs(Quantization.FOUR_BIT, torch.bfloat16, "cpu")["quantization_config"]
    assert gpu.load_in_4bit and gpu.bnb_4bit_quant_type == "nf4" and gpu.bnb_4bit_use_double_quant
    assert quantization.compute_dtype(torch.bfloat16, "cuda") is torch.bfloat16
    assert quantization.compute_dtype(torch.float32, "cpu") is torch.float32
    config = quantization.bnb_config(Quantization.FOUR_BIT, quantization.compute_dtype(torch.bfloat16, "cuda"))
    assert config is not None and config.bnb_4bit_compute_dtype is torch.bfloat16
    eight = quantization.bnb_config(Quantization.EIGHT_BIT, torch.float32)
    assert eight is not None and eight.load_in_8bit and not eight.load_in_4bit
    assert quantization.from_pretrained_kwargs(Quantization.NONE, torch.float32, "cpu") == {}
