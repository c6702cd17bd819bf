"""memory.py: the GPU memory estimate, arithmetic on config.json, checked against known shapes."""

from __future__ import annotations

import pytest

from kubetune_api.spec import LoRASpec, Quantization, TrainingSpec
from kubetune_trainer.memory import GIB, estimate_memory, quantized_linear_bytes

# Llama-3.2-1B's published config.json (the numbers that matter here).
LLAMA_1B = {
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "num_hidden_layers": 16,
    "vocab_size": 128256,
    "tie_word_embeddings": True,
}


def test_parameter_count_matches_the_published_size() -> None:
    estimate = estimate_memory(LLAMA_1B, TrainingSpec(), LoRASpec(), batch_size=1)
    assert 1.23e9 < estimate.model_parameters < 1.25e9  # "1.24B"
    # r=16 on all seven projections of 16 layers
    per_layer = 16 * ((2048 + 2048) * 2 + (2048 + 512) * 2 + (2048 + 8192) * 2 + (8192 + 2048))
    assert estimate.lora_parameters == 16 * per_layer


def test_checkpointing_and_batch_size_move_the_estimate_the_right_way() -> None:
    plain = TrainingSpec(gradientCheckpointing=False, maxSeqLength=2048)
    checkpointed = TrainingSpec(gradientCheckpointing=True, maxSeqLength=2048)
    a = estimate_memory(LLAMA_1B, plain, LoRASpec(), batch_size=4)
    b = estimate_memory(LLAMA_1B, checkpointed, LoRASpec(), batch_size=4)
    c = estimate_memory(LLAMA_1B, checkpointed, LoRASpec(), batch_size=8)
    assert b.activation_bytes < a.activation_bytes / 4
    assert c.total_bytes > b.total_bytes
    assert a.total_bytes == sum(
        (a.weights_bytes, a.lora_training_bytes, a.activation_bytes, a.logits_bytes, a.overhead_bytes)
    )
    # bf16 weights of a 1B model plus 4 x 2048 tokens fits an 80 GiB GPU with room to spare.
    assert 5 * GIB < b.total_bytes < 40 * GIB


def test_named_target_modules_count_only_those() -> None:
    estimate = estimate_memory(LLAMA_1B, TrainingSpec(), LoRASpec(targetModules=["q_proj", "v_proj"]), batch_size=1)
    assert estimate.lora_parameters == 16 * 16 * ((2048 + 2048) + (2048 + 512))


# -- QLoRA (lora.quantization) ---------------------------------------------------------------------

# Llama-3-8B's published config.json.
LLAMA_8B = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "num_hidden_layers": 32,
    "vocab_size": 128256,
    "tie_word_embeddings": False,
}


def test_quantised_linear_bytes_per_weight() -> None:
    n = 4096 * 14336
    four = quantized_linear_bytes(4096, 14336, Quantization.FOUR_BIT)
    assert four == n // 2 + n // 64 + 4 * (n // 64 // 256)  # NF4 + 8-bit block scales + fp32 scales of those
    assert 0.515 < four / n < 0.517
    assert quantized_linear_bytes(4096, 14336, Quantization.EIGHT_BIT) == n + 4 * 14336


def test_quantisation_shrinks_the_weights_and_nothing_else() -> None:
    training = TrainingSpec(maxSeqLength=2048, gradientCheckpointing=True)
    plain = estimate_memory(LLAMA_8B, training, LoRASpec(), batch_size=2)
    eight = estimate_memory(LLAMA_8B, training, LoRASpec(quantization="8bit"), batch_size=2)
    four = estimate_memory(LLAMA_8B, training, LoRASpec(quantization="4bit"), batch_size=2)
    assert 7.9e9 < plain.model_parameters < 8.1e9  # "8B"
    assert plain.weights_bytes == 2 * plain.model_parameters  # bf16
    # 6.98B linear weights quantised; embeddings and head (1.05B) stay, upcast to fp32 by PEFT's k-bit prep
    linear = 32 * (4096 * 4096 * 2 + 4096 * 1024 * 2 + 3 * 4096 * 14336)
    others = plain.model_parameters - linear
    assert four.weights_bytes == pytest.approx(linear * 0.516 + others * 4, rel=1e-3)
    assert eight.weights_bytes == pytest.approx(linear * 1.0 + others * 4, rel=1e-3)
    assert 7 * GIB < four.weights_bytes < 8 * GIB < eight.weights_bytes < 12 * GIB < plain.weights_bytes
    for quantised in (four, eight):
        assert quantised.lora_training_bytes == plain.lora_training_bytes
        assert quantised.activation_bytes == plain.activation_bytes
        assert quantised.total_bytes == sum(
            (
                quantised.weights_bytes,
                quantised.lora_training_bytes,
                quantised.activation_bytes,
                quantised.logits_bytes,
                quantised.overhead_bytes,
            )
        )


def test_dora_adds_a_magnitude_per_output_feature() -> None:
    plain = estimate_memory(LLAMA_1B, TrainingSpec(), LoRASpec(targetModules=["q_proj", "v_proj"]), batch_size=1)
    dora = estimate_memory(
        LLAMA_1B, TrainingSpec(), LoRASpec(targetModules=["q_proj", "v_proj"], useDora=True), batch_size=1
    )
    assert dora.lora_parameters - plain.lora_parameters == 16 * (2048 + 512)
