"""The serving handoff, pure parts: vLLM's LoRA-loader rules, the snippets, the model card section.

Real PEFT-saved adapters (DoRA, modules_to_save, an lm_head target, a bad rank) are checked in
tests/integration/test_serving_handoff.py; here the rules meet hand-written configs and key names.
"""

from __future__ import annotations

import json
import re
import shlex
import struct
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune_api.serving import (
    VLLM_MAX_LORA_RANKS,
    check_adapter_config,
    check_tensor_names,
    check_vllm_adapter,
    kserve_name,
    serving_snippets,
    vllm_max_lora_rank,
)
from kubetune_trainer.export import model_card, serving_section
from kubetune_trainer.serving import ServingHandoff, VllmCheck, check_adapter_dir, safetensors_names

RFC1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")

# What PEFT writes for kubetune's all-linear LoRA on a Llama-style model.
PEFT_CONFIG: dict[str, Any] = {
    "peft_type": "LORA",
    "r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "bias": "none",
    "modules_to_save": None,
    "use_dora": False,
    "use_rslora": False,
    "init_lora_weights": True,
    "rank_pattern": {},
    "alpha_pattern": {},
}
LLAMA_KEYS = [
    f"base_model.model.model.layers.{i}.{part}.{m}.lora_{ab}.weight"
    for i in range(2)
    for part, modules in (("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")), ("mlp", ("gate_proj", "up_proj")))
    for m in modules
    for ab in "AB"
]


def config(**changes: Any) -> dict[str, Any]:
    return {**PEFT_CONFIG, **changes}


# -- adapter_config.json ---------------------------------------------------------------------------


def test_a_plain_peft_lora_config_loads() -> None:
    assert check_adapter_config(PEFT_CONFIG) == []
    assert check_vllm_adapter(PEFT_CONFIG, LLAMA_KEYS, "llama") == []


BAD_CONFIGS = [
    ("dora", {"use_dora": True}, "use_dora: vLLM does not load DoRA adapters; set lora.useDora false"),
    ("rank-too-big", {"r": 600}, "r=600: above 512, the largest --max-lora-rank vLLM accepts"),
    ("rank-pattern-too-big", {"rank_pattern": {"q_proj": 1024}}, "r=1024: above 512"),
    ("rank-zero", {"r": 0}, "r=0: vLLM requires a positive LoRA rank"),
    ("modules-to-save", {"modules_to_save": ["lm_head"]}, "modules_to_save=['lm_head']: vLLM cannot load"),
    ("lm-head-target", {"target_modules": ["q_proj", "lm_head"]}, "lm_head: a LoRA on the embeddings or output"),
    ("embed-target", {"target_modules": ["embed_tokens"]}, "embed_tokens: a LoRA on the embeddings"),
    ("bias", {"bias": "all"}, "bias='all': vLLM refuses adapter biases"),
    ("lora-bias", {"lora_bias": True}, "lora_bias: vLLM does not support LoRA bias"),
    ("pissa", {"init_lora_weights": "pissa"}, "init_lora_weights='pissa': changes the base weights"),
    ("layer-replication", {"layer_replication": [[0, 2]]}, "layer_replication: vLLM does not support"),
    ("qalora", {"use_qalora": True}, "use_qalora: vLLM does not support QALoRA"),
    ("bdlora", {"use_bdlora": {"block_size": 4}}, "use_bdlora: vLLM does not support block-diagonal LoRA"),
    ("alora", {"alora_invocation_tokens": [7]}, "alora_invocation_tokens: vLLM does not support activated LoRA"),
]


@pytest.mark.parametrize(("changes", "expected"), [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
def test_each_refused_feature_is_named(changes: dict[str, Any], expected: str) -> None:
    problems = check_adapter_config(config(**changes))
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected), problems


def test_missing_required_fields_are_named() -> None:
    problems = check_adapter_config({"bias": "none"})
    assert problems == [
        "adapter_config.json lacks r, lora_alpha, target_modules: vLLM requires r, lora_alpha, target_modules"
    ]


def test_classifier_heads_may_be_saved_and_gaussian_init_is_plain() -> None:
    assert check_adapter_config(config(modules_to_save=["score"], init_lora_weights="gaussian")) == []


def test_max_lora_rank_rounds_up_to_a_choice_vllm_accepts() -> None:
    assert [vllm_max_lora_rank(r) for r in (1, 2, 8, 9, 16, 17, 300, 321, 512)] == [1, 8, 8, 16, 16, 32, 320, 512, 512]
    assert vllm_max_lora_rank(513) is None
    assert VLLM_MAX_LORA_RANKS[-1] == 512


# -- adapter_model.safetensors key names -----------------------------------------------------------


def test_full_weights_saved_with_the_adapter_are_named() -> None:
    keys = [*LLAMA_KEYS, "base_model.model.lm_head.modules_to_save.default.weight", "base_model.model.score.weight"]
    (problem,) = check_tensor_names(keys, "llama")
    assert problem.startswith("adapter_model.safetensors holds base_model.model.lm_head.modules_to_save.default.weight")
    assert "not a LoRA weight" in problem


def test_dora_magnitude_vectors_are_named() -> None:
    keys = [*LLAMA_KEYS, "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"]
    assert check_tensor_names(keys, "llama") == [
        "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector: a DoRA magnitude vector; "
        "vLLM does not load DoRA adapters"
    ]


def test_an_lm_head_lora_is_named_once_from_config_and_tensors() -> None:
    # PEFT also saves the base head (save_embedding_layers); vLLM skips `base_layer` weights
    head = ["lora_A.weight", "lora_B.weight", "base_layer.weight"]
    keys = [*LLAMA_KEYS, *(f"base_model.model.lm_head.{suffix}" for suffix in head)]
    problems = check_vllm_adapter(config(target_modules=["q_proj", "lm_head"]), keys, "llama")
    assert len(problems) == 1 and problems[0].startswith("lm_head: ")


def test_target_modules_outside_the_family_are_named() -> None:
    # Phi-3 checkpoints hold fused qkv_proj / gate_up_proj; separate q_proj LoRAs have no layer to land on
    problems = check_tensor_names(LLAMA_KEYS, "phi3")
    assert len(problems) == 1
    assert problems[0].startswith("target modules ['gate_proj', 'k_proj', 'q_proj', 'up_proj', 'v_proj']: vLLM's phi3")


def test_an_unknown_family_is_not_checked_for_target_names() -> None:
    assert check_tensor_names(["base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"], "gpt2") == []


# -- the trainer's file reader ---------------------------------------------------------------------


def write_safetensors(path: Path, names: list[str]) -> None:
    """A valid safetensors file holding one float32 zero per name (the format, written by hand)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    for i, name in enumerate(names):
        header[name] = {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * (i + 1)]}
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 4 * len(names))


def test_the_check_reads_only_the_config_and_the_header(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text(json.dumps(config(r=24)))
    write_safetensors(tmp_path / "adapter_model.safetensors", LLAMA_KEYS)
    assert safetensors_names(tmp_path / "adapter_model.safetensors") == sorted(LLAMA_KEYS)
    check = check_adapter_dir(tmp_path, "llama")
    assert check.compatible and check.rank == 24 and check.max_lora_rank == 32
    assert check.to_manifest() == {"compatible": True, "problems": [], "maxLoraRank": 32, "notes": []}
    unknown = check_adapter_dir(tmp_path, "gpt2")
    assert unknown.compatible is None and unknown.to_manifest()["compatible"] is None
    assert unknown.notes == [
        "model_type 'gpt2' is not in kubetune's table of vLLM LoRA layers: target module names were not checked"
    ]


def test_a_missing_or_broken_adapter_is_a_problem(tmp_path: Path) -> None:
    check = check_adapter_dir(tmp_path, "llama")
    assert check.problems == [
        f"{tmp_path}: adapter_config.json, adapter_model.safetensors missing; vLLM loads only these files"
    ]
    (tmp_path / "adapter_config.json").write_text(json.dumps(PEFT_CONFIG))
    (tmp_path / "adapter_model.safetensors").write_bytes(b"\x01")
    (problem,) = check_adapter_dir(tmp_path, "llama").problems
    assert problem.startswith(f"{tmp_path}: unreadable adapter: ") and "shorter than its 8-byte header" in problem


# -- snippets --------------------------------------------------------------------------------------


def test_kserve_names_are_dns_labels() -> None:
    for job, expected in [
        ("support-bot", "support-bot"),
        ("Support.Bot_v2", "support-bot-v2"),
        ("7b-run", "ftj-7b-run"),
        ("a" * 80, "a" * 45),
        ("x." + "-" * 60 + "y", "x"),
    ]:
        name = kserve_name(job)
        assert name == expected
        assert RFC1123_LABEL.match(name) and DNS1035_LABEL.match(name)


def test_s3_snippets_copy_then_serve_with_the_right_rank_and_uris() -> None:
    snippets = serving_snippets(
        "support.bot",
        "s3://models/llama-3.2-1b/",
        "s3://artifacts/support/",
        24,
        storage_endpoint="http://minio.storage:9000",
    )
    assert snippets.problems == [] and snippets.max_lora_rank == 32
    assert snippets.vllm_command is not None and snippets.kserve_inference_service is not None
    base, adapter, serve = (shlex.split(line) for line in snippets.vllm_command.splitlines())
    endpoint = ["--endpoint-url", "http://minio.storage:9000"]
    assert base == ["aws", "s3", "sync", "s3://models/llama-3.2-1b/", "./base-model", *endpoint]
    assert adapter == [
        *("aws", "s3", "sync", "s3://artifacts/support/", "./adapters/support-bot", *endpoint),
        *("--exclude", "checkpoints/*", "--exclude", "merged/*"),
    ]
    assert serve == [
        *("vllm", "serve", "./base-model", "--enable-lora", "--max-lora-rank", "32"),
        *("--lora-modules", "support-bot=./adapters/support-bot"),
    ]
    isvc = yaml.safe_load(snippets.kserve_inference_service)
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    assert DNS1035_LABEL.match(isvc["metadata"]["name"])
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": "huggingface"}
    assert model["storageUris"] == [
        {"uri": "s3://models/llama-3.2-1b/", "path": "/mnt/models/base"},
        {"uri": "s3://artifacts/support/", "path": "/mnt/models/adapter"},
    ]
    assert model["args"] == [
        "--model_name=support-bot-base",
        "--model_dir=/mnt/models/base",
        "--enable-lora",
        "--max-lora-rank=32",
        "--lora-modules=support-bot=/mnt/models/adapter",
    ]
    assert snippets.merged_vllm_command is None and snippets.merged_kserve_inference_service is None


def test_local_and_volume_uris_are_served_in_place() -> None:
    snippets = serving_snippets("local-run", "file:///models/tiny/", "pvc://results/runs/local-run/", 8)
    assert snippets.vllm_command == (
        "vllm serve /models/tiny --enable-lora --max-lora-rank 8 --lora-modules local-run=/mnt/results/runs/local-run"
    )
    uris = [
        s["uri"]
        for s in yaml.safe_load(snippets.kserve_inference_service or "")["spec"]["predictor"]["model"]["storageUris"]
    ]
    assert uris == ["file:///models/tiny/", "pvc://results/runs/local-run/"]


def test_merged_weights_are_served_without_lora() -> None:
    snippets = serving_snippets("run", "s3://models/m/", "s3://artifacts/run/", 16, merged=True)
    assert snippets.merged_vllm_command == (
        "aws s3 sync s3://artifacts/run/merged/ ./models/run\nvllm serve ./models/run --served-model-name run"
    )
    isvc = yaml.safe_load(snippets.merged_kserve_inference_service or "")
    model = isvc["spec"]["predictor"]["model"]
    assert model["storageUris"] == [{"uri": "s3://artifacts/run/merged/", "path": "/mnt/models/merged"}]
    assert "--enable-lora" not in model["args"]


def test_problems_withhold_the_lora_snippets_but_not_the_merged_ones() -> None:
    dora = check_adapter_config(config(use_dora=True))
    snippets = serving_snippets("run", "s3://models/m/", "s3://artifacts/run/", 16, merged=True, problems=dora)
    assert snippets.vllm_command is None and snippets.kserve_inference_service is None
    assert snippets.merged_vllm_command is not None and snippets.problems == dora
    too_big = serving_snippets("run", "s3://models/m/", "s3://artifacts/run/", 1024)
    assert too_big.vllm_command is None and too_big.max_lora_rank is None


# -- the model card --------------------------------------------------------------------------------

EVALS: dict[str, Any] = {"baseline": {"loss": 2.0, "perplexity": 7.4}, "finetuned": {"loss": 1.0, "perplexity": 2.7}}


def handoff(problems: list[str], merged: bool = False) -> ServingHandoff:
    snippets = serving_snippets("run", "s3://models/m/", "s3://artifacts/run/", 16, merged=merged, problems=problems)
    return ServingHandoff(VllmCheck(problems, 16), snippets)


def test_the_card_gives_the_snippets_of_a_servable_adapter() -> None:
    card = model_card("run", "s3://models/m/", "s3://data/t.jsonl", {"r": 16}, EVALS, serving=handoff([]))
    snippets = handoff([]).snippets
    assert "## Serving" in card and "Warning" not in card
    assert "`--max-lora-rank 16`" in card
    assert "vLLM reads local directories, not s3:// URIs" in card and "KServe cannot fetch file://" not in card
    assert "```bash\naws s3 sync s3://models/m/ ./base-model\n" in card
    assert "vllm serve ./base-model --enable-lora --max-lora-rank 16 --lora-modules run=./adapters/run\n```" in card
    isvc = card.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert yaml.safe_load(isvc)["kind"] == "InferenceService"
    assert "Merged weights" not in card
    unchecked = ServingHandoff(VllmCheck([], 16, ["model_type 'rwkv' is not in kubetune's table"], False), snippets)
    section = serving_section(unchecked)
    assert "breaks none of its rules" in section and "Note: model_type 'rwkv' is not in kubetune's table." in section


def test_the_card_warns_when_vllm_cannot_serve_the_adapter() -> None:
    dora = check_adapter_config(config(use_dora=True))
    section = serving_section(handoff(dora, merged=True))
    assert "> **Warning: vLLM cannot serve this adapter as a LoRA.**" in section
    assert f"> - {dora[0]}" in section
    assert "`output.mergeAdapter: true`" in section and "`lora.useDora: false`" in section
    assert "--enable-lora" not in section
    assert "### Merged weights (no LoRA)" in section and "vllm serve ./models/run --served-model-name run" in section


def test_no_handoff_no_section() -> None:
    assert serving_section(None) == ""
    assert "## Serving" not in model_card("run", "s3://m/", "s3://d/t.jsonl", {}, EVALS)


def test_the_card_of_a_local_run_has_no_copy_step_and_says_kserve_needs_a_bucket() -> None:
    snippets = serving_snippets("run", "file:///models/m/", "file:///runs/run/", 16)
    section = serving_section(ServingHandoff(VllmCheck([], 16), snippets))
    assert "```bash\nvllm serve /models/m --enable-lora" in section
    assert "not s3:// URIs" not in section and "KServe cannot fetch file:// URIs" in section


def test_an_adapter_path_with_a_comma_is_passed_as_json() -> None:
    snippets = serving_snippets("run", "file:///models/m/", "file:///runs/a,b/", 8)
    serve = shlex.split((snippets.vllm_command or "").splitlines()[-1])
    assert json.loads(serve[serve.index("--lora-modules") + 1]) == {"name": "run", "path": "/runs/a,b"}


def test_the_example_in_docs_serving_md_is_what_the_builder_gives() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "serving.md").read_text()
    bash = re.findall(r"```bash\n(.*?)```", doc, re.S)
    isvc = re.findall(r"```yaml\n(.*?)```", doc, re.S)
    snippets = serving_snippets(
        "support-bot",
        "s3://models/llama-3.2-1b/",
        "s3://artifacts/support/",
        16,
        storage_endpoint="http://minio.storage:9000",
        merged=True,
    )
    assert bash[0] == f"{snippets.vllm_command}\n"
    assert isvc[0] == snippets.kserve_inference_service
    merged = serving_snippets("support-bot", "s3://models/llama-3.2-1b/", "s3://artifacts/support/", 16, merged=True)
    assert bash[1] == f"{merged.merged_vllm_command}\n"
