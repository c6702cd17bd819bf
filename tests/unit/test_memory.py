"""memory.py: the GPU memory estimate, arithmetic on config.json, checked against known shapes."""

from __future__ import annotations

from kubetune_api.spec import LoRASpec, TrainingSpec
from kubetune_trainer.memory import GIB, estimate_memory

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
