"""Tiny random models of every common transformers causal-LM family, built locally (no hub).

    build_tiny_model("qwen3_next", dest) -> dest      # config.json, model.safetensors, tokenizer

Each model is made from its family's own config class (`AutoConfig.for_model`) at toy size:
2-3 layers, hidden 64, 4 experts / top-2 for MoE, and, for hybrids, at least one attention
layer AND one linear-attention/SSM layer, so the matrix exercises every layer kind the family
has. The tokenizer is the quickstart's byte-level BPE (digits split one per token), so the
vocabulary matches and the numbers data trains on every family.

`FAMILIES` is the table the family matrix (tests/integration/test_model_families.py) runs
over and docs/models.md describes: what `all-linear` must adapt in each family, and the
families this transformers cannot train here, with the cause (`refused`).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart"

HIDDEN = 64
LAYERS = 2

# The usual LLM projections (Llama and most of its descendants).
ATTN = frozenset({"q_proj", "k_proj", "v_proj", "o_proj"})
MLP = frozenset({"gate_proj", "up_proj", "down_proj"})
LLAMA = ATTN | MLP
GDN = frozenset({"in_proj_qkv", "in_proj_z", "in_proj_a", "in_proj_b", "out_proj"})  # Gated DeltaNet (Qwen3.5)
# Mamba 1: dt_proj is read as a weight (never called) and PEFT refuses out_proj, so only these
MAMBA = frozenset({"in_proj", "x_proj"})
LFM = frozenset({"q_proj", "k_proj", "v_proj", "out_proj", "in_proj", "w1", "w2", "w3"})  # LFM2 short conv + GLU


@dataclass(frozen=True)
class Family:
    """One causal-LM family: how to shrink its config, and what LoRA all-linear must adapt."""

    model_type: str
    kind: str  # dense | moe | hybrid (attention + linear/SSM layers) | ssm (no attention at all)
    targets: frozenset[str]  # module-name suffixes that all-linear adapts (never the output head)
    overrides: dict[str, Any] = field(default_factory=dict)
    refused: str | None = None  # why kubetune cannot train this family here; None: it trains
    notes: str = ""


def _f(
    model_type: str,
    kind: str,
    targets: frozenset[str] | set[str],
    notes: str = "",
    refused: str | None = None,
    **overrides: Any,
) -> Family:
    return Family(model_type, kind, frozenset(targets), overrides, refused=refused, notes=notes)


FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in [
        # -- dense transformers ------------------------------------------------------------------------------
        _f("llama", "dense", LLAMA),
        _f("mistral", "dense", LLAMA),
        _f("qwen2", "dense", LLAMA),
        _f("qwen3", "dense", LLAMA),
        _f("gemma", "dense", LLAMA),
        _f("gemma2", "dense", LLAMA),
        _f("gemma3_text", "dense", LLAMA),
        _f("phi3", "dense", {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}),
        _f("olmo2", "dense", LLAMA),
        _f("granite", "dense", LLAMA),
        _f("gpt_neox", "dense", {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"}),
        _f(
            "falcon",
            "dense",
            {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"},
            new_decoder_architecture=True,
            num_kv_heads=2,
            ffn_hidden_size=4 * HIDDEN,
        ),
        _f("starcoder2", "dense", {"q_proj", "k_proj", "v_proj", "o_proj", "c_fc", "c_proj"}),
        # -- mixture of experts ------------------------------------------------------------------------------
        _f("mixtral", "moe", ATTN),
        _f("qwen3_moe", "moe", ATTN),
        _f("olmoe", "moe", ATTN),
        # -- hybrids: attention layers plus linear-attention / SSM / recurrent layers -----------------------
        _f(
            "qwen3_next",
            "hybrid",
            ATTN | {"in_proj_qkvz", "in_proj_ba", "out_proj"},
            layer_types=["linear_attention", "full_attention"],
        ),
        _f("qwen3_5_text", "hybrid", LLAMA | GDN, layer_types=["linear_attention", "full_attention"]),
        _f("qwen3_5_moe_text", "hybrid", ATTN | GDN, layer_types=["linear_attention", "full_attention"]),
        _f(
            "lara_mini",
            "hybrid",
            ATTN | GDN,
            num_hidden_layers=3,
            layer_types=["linear_attention", "sliding_attention", "full_attention"],
        ),
        _f(
            "olmo_hybrid",
            "hybrid",
            LLAMA | {"a_proj", "b_proj", "g_proj"},
            layer_types=["linear_attention", "full_attention"],
        ),
        _f(
            "kimi_linear",
            "hybrid",
            LLAMA | {"b_proj", "f_a_proj", "f_b_proj", "g_a_proj", "g_b_proj", "kv_a_proj_with_mqa", "kv_b_proj"},
            num_key_value_heads=4,  # MLA: one key/value head per query head
            layer_types=["linear_attention", "full_attention"],
            mlp_layer_types=["dense", "sparse"],
        ),
        _f(
            "bailing_hybrid",
            "hybrid",
            LLAMA | {"b_proj", "f_proj", "g_proj", "kv_a_proj_with_mqa", "kv_b_proj"},
            num_key_value_heads=4,  # MLA: one key/value head per query head
            layer_types=["linear_attention", "full_attention"],
            mlp_layer_types=["dense", "sparse"],
            first_k_dense_replace=1,
            num_nextn_predict_layers=0,
            layer_group_size=2,
        ),
        _f(
            "falcon_h1",
            "hybrid",
            LLAMA | {"in_proj"},
            mamba_d_ssm=2 * HIDDEN,
            mamba_n_heads=8,
            mamba_d_head=16,
            mamba_d_state=16,
            mamba_chunk_size=16,
        ),
        _f(
            "bamba",
            "hybrid",
            LLAMA | {"in_proj", "out_proj"},
            attn_layer_indices=[1],
            mamba_n_heads=8,
            mamba_d_head=16,
            mamba_d_state=16,
            mamba_chunk_size=16,
        ),
        _f(
            "granitemoehybrid",
            "hybrid",
            ATTN | {"in_proj", "out_proj", "input_linear", "output_linear"},
            layer_types=["mamba", "attention"],
            mamba_n_heads=8,
            mamba_d_head=16,
            mamba_d_state=16,
            mamba_chunk_size=16,
            shared_intermediate_size=HIDDEN,
        ),
        _f(
            "nemotron_h",
            "hybrid",
            ATTN | {"in_proj"},
            layers_block_type=["mamba", "attention", "moe"],
            mamba_num_heads=8,
            mamba_head_dim=16,
            ssm_state_size=16,
            n_groups=1,
            chunk_size=16,
            n_routed_experts=4,
            moe_shared_expert_intermediate_size=HIDDEN,
            use_mamba_kernels=False,
        ),
        _f(
            "jamba",
            "hybrid",
            LLAMA | {"in_proj", "x_proj", "out_proj"},
            attn_layer_period=2,
            attn_layer_offset=1,
            expert_layer_period=2,
            expert_layer_offset=1,
            mamba_d_state=8,
            mamba_dt_rank=8,
            use_mamba_kernels=False,
        ),
        _f(
            "zamba",
            "hybrid",
            {"in_proj", "out_proj", "linear"},
            # two hybrid layers: Zamba ties the shared transformer block of every hybrid layer to the first
            num_hidden_layers=3,
            layers_block_type=["linear_attention", "hybrid", "hybrid"],
            n_mamba_heads=2,
            mamba_d_state=8,
            mamba_dt_rank=8,
            use_mamba_kernels=False,
        ),
        _f(
            "zamba2",
            "hybrid",
            {"in_proj", "out_proj", "linear"},
            num_hidden_layers=3,
            layers_block_type=["mamba", "hybrid", "hybrid"],  # two hybrid layers share one block
            n_mamba_heads=8,
            mamba_d_state=16,
            chunk_size=16,
            use_mamba_kernels=False,
        ),
        _f(
            "lfm2",
            "hybrid",
            LFM,
            layer_types=["conv", "full_attention"],
            full_attn_idxs=[1],
            block_auto_adjust_ff_dim=False,
        ),
        _f("lfm2_moe", "hybrid", LFM, layer_types=["conv", "full_attention"], num_dense_layers=1),
        _f(
            "lfm3",
            "hybrid",
            LFM | {"o_proj", "g_proj"},
            num_hidden_layers=3,
            layer_types=["conv", "full_attention", "sliding_attention"],
        ),
        _f(
            "minimax",
            "hybrid",
            ATTN | {"qkv_proj", "out_proj", "output_gate"},
            layer_types=["linear_attention", "full_attention"],
            block_size=16,
        ),
        _f(
            "recurrent_gemma",
            "hybrid",
            LLAMA | {"linear_x", "linear_y", "linear_out"},
            block_types=["recurrent", "attention"],
            lru_width=HIDDEN,
            num_key_value_heads=1,
            attention_window_size=16,
        ),
        _f("inkling_text", "hybrid", ATTN | {"r_proj"}),
        _f("inkling2_text", "hybrid", {"linear", "gate_proj", "sink_proj"}, unpadded_vocab_size=None),
        _f(
            "qwen4_exp_text",
            "hybrid",
            ATTN | GDN | {"index_qk_proj", "block_inject_weight", "input_mix_weight_down", "input_mix_weight_up"},
            layer_types=["linear_attention", "indexed_attention"],
            hc_lowrank=16,
            ple_embed_dim=HIDDEN,
            ngram_vocab_size_base=1024,
            split_ngram_parts=4,
            heads_per_ngram=2,
            indexer_n_heads=2,
            indexer_kv_heads=1,
            indexer_head_dim=16,
            indexer_budget=16,
            indexer_compress_ratio=4,
        ),
        _f(
            "inkling2_loop_text",
            "hybrid",
            {"linear", "gate_proj", "sink_proj", "down_proj", "forget_gate_proj", "message_gate_proj", "weight_proj"},
            refused=(
                "its published adapter does not reload: PEFT 0.21 maps the adapter keys of the dynamic short "
                "convolutions (sconv.weight_proj) through transformers 5.24's checkpoint conversion on load, and "
                "the trained weights there are silently dropped (reloaded logits differ from the trained model's)"
            ),
            unpadded_vocab_size=None,
            num_hidden_layers=3,
            layer_types=["hybrid_sliding", "hybrid", "hybrid_sliding"],
            loop_layer_index_start=1,
            loop_layer_index_end=2,
            loop_num_passes=2,
            loop_gate_rank=8,
            n_layers_per_attn_res_block=1,
        ),
        _f(
            "zaya",
            "hybrid",
            {"q_proj", "k_proj", "o_proj", "v_proj_current", "v_proj_delayed"},
            router_hidden_size=16,
            num_experts_per_tok=1,
        ),
        # -- attention-free: SSM / RNN ----------------------------------------------------------------------
        _f("mamba", "ssm", MAMBA, state_size=8, time_step_rank=8),
        _f("falcon_mamba", "ssm", MAMBA, state_size=8, time_step_rank=8),
        _f(
            "mamba2",
            "ssm",
            {"in_proj"},
            num_heads=8,
            head_dim=16,
            n_groups=1,
            state_size=16,
            chunk_size=16,
            time_step_rank=8,
        ),
        _f("rwkv", "ssm", {"key", "value", "receptance", "output"}, attention_hidden_size=HIDDEN, context_length=256),
        _f(
            "xlstm",
            "ssm",
            {
                "q",
                "k",
                "v",
                "igate_preact",
                "fgate_preact",
                "ogate_preact",
                "out_proj",
                "proj_up",
                "proj_up_gate",
                "proj_down",
            },
            embedding_dim=HIDDEN,
            num_heads=4,
            num_blocks=LAYERS,
            chunk_size=16,
            mode="inference",  # "train" needs every row length to be a multiple of chunk_size
            autocast_kernel_dtype="float32",
        ),
    ]
}


def build_tokenizer() -> Any:
    """The quickstart's BPE tokenizer, trained on the quickstart numbers (fast, no hub)."""
    if str(QUICKSTART) not in sys.path:
        sys.path.insert(0, str(QUICKSTART))
    from build_base_model import build_tokenizer as quickstart_tokenizer  # type: ignore[import-not-found]

    rows = [json.loads(line) for line in (QUICKSTART / "numbers.jsonl").read_text().splitlines()]
    return quickstart_tokenizer([r["prompt"] + r["completion"] for r in rows])


def tiny_config(family: Family, tokenizer: Any) -> Any:
    """The family's config class at toy size; only keys the class knows are set."""
    from transformers import AutoConfig

    defaults = AutoConfig.for_model(family.model_type)
    generic: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": HIDDEN,
        "intermediate_size": 2 * HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": HIDDEN // 4,
        "max_position_embeddings": 256,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        # MoE: 4 experts, top-2, small experts
        "num_local_experts": 4,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": HIDDEN,
        "shared_expert_intermediate_size": HIDDEN,
        # linear attention (gated delta net, KDA, lightning) and MLA sizes
        "linear_num_key_heads": 2,
        "linear_num_value_heads": 4,
        "linear_key_head_dim": 16,
        "linear_value_head_dim": 16,
        "linear_num_heads": 4,
        "linear_head_dim": 16,
        "kv_lora_rank": 16,
        "qk_rope_head_dim": 8,
        "qk_nope_head_dim": 8,
        "v_head_dim": 16,
        "n_routed_experts": 4,
        "num_experts_per_token": 2,
        "num_expert_group": 1,
        "topk_group": 1,
        "swa_num_attention_heads": 4,
        "swa_num_key_value_heads": 2,
        "swa_head_dim": HIDDEN // 4,
        "sliding_window_size": 16,
        # sliding windows shorter than the rows, so the windowed path is the one exercised
        "sliding_window": 16,
    }
    # only the keys this config class has, and not the ones it derives (read-only properties)
    kwargs = {
        k: v
        for k, v in generic.items()
        if hasattr(defaults, k) and not isinstance(getattr(type(defaults), k, None), property)
    }
    kwargs.update(family.overrides)
    if "unpadded_vocab_size" in kwargs and kwargs["unpadded_vocab_size"] is None:
        kwargs["unpadded_vocab_size"] = len(tokenizer)  # inkling2: the real (unpadded) vocabulary
    return AutoConfig.for_model(family.model_type, **kwargs)


def build_tiny_model(family: str, dest: Path, seed: int = 0) -> Path:
    """Save a random tiny `family` model and the quickstart tokenizer into `dest` (safetensors)."""
    import torch
    from transformers import AutoModelForCausalLM

    spec = FAMILIES[family]
    tokenizer = build_tokenizer()
    config = tiny_config(spec, tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    return dest


# Causal LMs whose modeling code mentions recurrence, SSMs or "lightning" without mixing tokens
# through a recurrent or linear-attention state: not hybrids in the sense of this matrix.
NOT_HYBRID: dict[str, str] = {
    "bigbird_pegasus": "encoder-decoder with block-sparse attention; 'recurrent' only in comments",
    "deepseek_v4": "softmax attention with a lightning indexer (sparse key selection), no linear attention",
    "minimax_m3_vl_text": "softmax attention with a lightning indexer (sparse key selection), no linear attention",
    "dory": "recurrent depth (layers looped), softmax attention over the sequence",
    "hrm_text": "hierarchical recurrent depth, softmax attention over the sequence",
    "granitemoe_swa": "sliding-window attention; mentions mamba_ssm only in shared helpers",
    "granitemoeshared": "softmax attention; mentions mamba_ssm only in shared helpers",
}

# What in a modeling file marks a layer that mixes tokens through a state or a convolution
SEQUENCE_MIXER = (
    r"causal_conv1d|selective_scan|gated_delta|linear_attn|LinearAttention|ssm_state|recurrent|wkv|mlstm|"
    r"ShortConv|lightning|RGLRU|mamba"
)


def uncovered_hybrids() -> list[str]:
    """Causal LMs of the installed transformers with SSM / linear-attention / recurrent / conv layers that
    neither FAMILIES covers (by model class) nor NOT_HYBRID explains. Empty when the matrix is complete."""
    import re

    import transformers
    from transformers.models.auto.configuration_auto import model_type_to_module_name
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    covered = {MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[name] for name in FAMILIES}
    models = Path(transformers.__file__).parent / "models"
    pattern = re.compile(SEQUENCE_MIXER, re.IGNORECASE)
    missing = []
    for model_type, cls in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items():
        if cls in covered or model_type in NOT_HYBRID:
            continue
        folder = models / model_type_to_module_name(model_type)
        if any(pattern.search(path.read_text()) for path in folder.glob("modeling_*.py")):
            missing.append(model_type)
    return sorted(missing)
