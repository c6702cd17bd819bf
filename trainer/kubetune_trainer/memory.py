"""Peak GPU memory of one training rank, estimated from config.json before a GPU is requested.

Pure arithmetic (no torch, no weights), so validation (`validate.validate_job`, which the
operator's CPU preflight Job runs) can warn that a job will not fit. Expect ±30 %: allocator
fragmentation and kernels' workspaces are folded into one overhead constant.
"""

from __future__ import annotations

from typing import Any

from kubetune_api.protocol import MemoryEstimate
from kubetune_api.spec import ALL_LINEAR, LoRASpec, Precision, Quantization, TrainingSpec

GIB = 2**30
CUDA_OVERHEAD_BYTES = 1 * GIB  # context, cuBLAS workspace, allocator slack
# Cross-entropy over the vocabulary holds three token x vocabulary fp32 tensors at its peak: the
# saved log-softmax, and in the backward pass its gradient and the logits' gradient (in bf16 the
# logits' own copy and their upcast add about as much as the fp32 run's kept logits).
LOGITS_FP32_COPIES = 3
# bitsandbytes NF4 with double quantisation: 4 bits a weight, one 8-bit absmax per block of 64
# weights, and one fp32 scale per 256 of those blocks.
NF4_BLOCK, NF4_SCALE_BLOCKS = 64, 256


def quantized_linear_bytes(in_features: int, out_features: int, quantization: Quantization) -> int:
    """Bytes of one frozen linear weight as bitsandbytes stores it."""
    n = in_features * out_features
    if quantization is Quantization.FOUR_BIT:
        blocks = -(-n // NF4_BLOCK)
        return n // 2 + blocks + 4 * -(-blocks // NF4_SCALE_BLOCKS)
    if quantization is Quantization.EIGHT_BIT:
        return n + 4 * out_features  # int8 weights and an fp32 scale per output row (LLM.int8)
    raise ValueError(f"{quantization} is not a quantised format")


def _linear_shapes(model_config: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(in, out) features of each linear layer in one decoder block (Llama/Qwen/Mistral shape)."""
    hidden = int(model_config["hidden_size"])
    heads = int(model_config["num_attention_heads"])
    kv_heads = int(model_config.get("num_key_value_heads") or heads)
    head_dim = int(model_config.get("head_dim") or hidden // heads)
    inter = int(model_config["intermediate_size"])
    return {
        "q_proj": (hidden, heads * head_dim),
        "k_proj": (hidden, kv_heads * head_dim),
        "v_proj": (hidden, kv_heads * head_dim),
        "o_proj": (heads * head_dim, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }


def activation_elements_per_token(model_config: dict[str, Any]) -> int:
    """Elements autograd keeps per token for one Llama-shaped block without recomputation.

    Attention: the norm's input and output, q and k before and after the rotary embedding, v, and
    the attention output (SDPA and flash attention keep no score matrix); MLP: the norm's input and
    output, the gate and up projections, the activation and the product that feeds down_proj.
    Checked against the tensors autograd saves (bench/memory_calibration.py): within 6% for a
    Llama with intermediate 2.75x hidden (Korthikanti et al. 2022 count 17 per hidden unit for
    GPT's 4x MLP)."""
    hidden = int(model_config["hidden_size"])
    heads = int(model_config["num_attention_heads"])
    kv_heads = int(model_config.get("num_key_value_heads") or heads)
    head_dim = int(model_config.get("head_dim") or hidden // heads)
    inter = int(model_config["intermediate_size"])
    q, kv = heads * head_dim, kv_heads * head_dim
    return 3 * hidden + 2 * q + 3 * kv + 2 * hidden + 4 * inter


def estimate_memory(
    model_config: dict[str, Any], training: TrainingSpec, lora: LoRASpec, batch_size: int
) -> MemoryEstimate:
    """Weights + LoRA training state + activations + logits for one micro-batch on one GPU."""
    hidden, layers = int(model_config["hidden_size"]), int(model_config["num_hidden_layers"])
    vocab = int(model_config["vocab_size"])
    shapes = _linear_shapes(model_config)
    block = sum(i * o for i, o in shapes.values()) + 2 * hidden
    embeddings = vocab * hidden * (1 if model_config.get("tie_word_embeddings") else 2)
    params = layers * block + embeddings + hidden
    targets = shapes.keys() if ALL_LINEAR in lora.target_modules else set(lora.target_modules) & shapes.keys()
    lora_params = layers * sum(lora.r * (shapes[name][0] + shapes[name][1]) for name in targets)
    if lora.use_dora:  # a magnitude per output feature of each adapted layer
        lora_params += layers * sum(shapes[name][1] for name in targets)

    weight_bytes = 4 if training.precision == Precision.FP32 else 2
    tokens = batch_size * training.max_seq_length
    per_layer = activation_elements_per_token(model_config) * tokens * weight_bytes
    # With checkpointing only each layer's input is kept, plus one layer being recomputed.
    saved_inputs = layers * weight_bytes * tokens * hidden + per_layer
    activations = saved_inputs if training.gradient_checkpointing else layers * per_layer
    logits = LOGITS_FP32_COPIES * tokens * vocab * 4
    weights = params * weight_bytes
    if lora.quantization is not Quantization.NONE:
        # The decoder blocks' linear layers are stored quantised; PEFT's k-bit preparation keeps
        # everything else (embeddings, head, norms) in fp32.
        linear = layers * sum(i * o for i, o in shapes.values())
        quantized = layers * sum(quantized_linear_bytes(i, o, lora.quantization) for i, o in shapes.values())
        weights = quantized + (params - linear) * 4
    lora_state = lora_params * 16  # fp32 weight, gradient and two AdamW moments
    total = weights + lora_state + activations + logits + CUDA_OVERHEAD_BYTES
    return MemoryEstimate(
        model_parameters=params,
        lora_parameters=lora_params,
        weights_bytes=weights,
        lora_training_bytes=lora_state,
        activation_bytes=activations,
        logits_bytes=logits,
        overhead_bytes=CUDA_OVERHEAD_BYTES,
        total_bytes=total,
    )
