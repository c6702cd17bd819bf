"""The packing guard end to end: a real architecture whose packed rows leak (Jamba: Mamba layers
carry state across the boundary) trains with packing turned off and says so; Llama keeps it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from conftest import trainer_config
from kubetune_api.protocol import RunSummary
from kubetune_api.trainer_config import TrainerConfig
from kubetune_trainer.recipe import run_training

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_jamba_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A 2-layer Jamba (one Mamba layer, one attention layer) with the tiny Llama's tokenizer."""
    dest = tmp_path_factory.mktemp("tiny-jamba")
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    config = AutoConfig.for_model(
        "jamba",
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attn_layer_period=2,
        attn_layer_offset=1,
        expert_layer_period=99,  # no MoE layer: this test is about the recurrent state
        use_mamba_kernels=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(str(dest))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny_model_dir / name).exists():
            shutil.copy(tiny_model_dir / name, dest / name)
    return dest


def train(tmp_path: Path, model: Path, data: Path) -> tuple[RunSummary, dict[str, object]]:
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(data.read_text().splitlines(keepends=True)[:80]))  # a small job is enough
    raw = trainer_config(
        str(model),
        str(rows),
        str(tmp_path / "out"),
        cache_dir=tmp_path / "cache",
        training={"max_steps": 2, "batch_size": 4, "max_seq_length": 64},
    )
    summary = run_training(TrainerConfig.model_validate(raw))
    return summary, json.loads((tmp_path / "out" / "manifest.json").read_text())


def test_a_leaking_architecture_trains_padded_and_records_why(
    tmp_path: Path, tiny_jamba_dir: Path, numbers_path: Path
) -> None:
    summary, manifest = train(tmp_path, tiny_jamba_dir, numbers_path)
    assert summary.model is not None and summary.model.packing is not None
    packing = summary.model.packing
    assert (packing.requested, packing.used) == (True, False)
    assert packing.reason is not None and packing.reason.startswith("JambaForCausalLM: packed rows see each other")
    training = manifest["training"]
    assert isinstance(training, dict)
    assert training["packing"] == {"requested": True, "used": False, "reason": packing.reason}
    data = manifest["data"]
    assert isinstance(data, dict)
    assert data["train_sequences"] == data["train_rows"], "one row per sequence: padded, not packed"
    assert manifest["baseModel"]["modelType"] == "jamba"  # type: ignore[index]


def test_an_attention_model_keeps_packing(tmp_path: Path, tiny_model_dir: Path, numbers_path: Path) -> None:
    summary, manifest = train(tmp_path, tiny_model_dir, numbers_path)
    assert summary.model is not None and summary.model.packing is not None
    assert (summary.model.packing.used, summary.model.packing.reason) == (True, None)
    assert summary.model.attention == "kubetune_packed_sdpa", "SDPA per packed row"
    data = manifest["data"]
    assert isinstance(data, dict) and data["train_sequences"] < data["train_rows"], "packed"


def test_a_packing_check_that_cannot_run_the_model_fails_as_unsupported(
    tmp_path: Path, tiny_model_dir: Path, numbers_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubetune_trainer import recipe
    from kubetune_trainer.errors import UnsupportedModel

    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("shape '[1, 7, 128, 64]' is invalid for input of size 896")

    monkeypatch.setattr(recipe, "check_packing", broken)
    with pytest.raises(UnsupportedModel, match=r"LlamaForCausalLM: a forward pass fails: RuntimeError: shape"):
        train(tmp_path, tiny_model_dir, numbers_path)
    assert not (tmp_path / "out" / "manifest.json").exists()
