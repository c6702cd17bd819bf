"""Sample protocol messages shared by the protocol tests and the operator's decision tests."""

from __future__ import annotations

from kubetune_api.protocol import DataStats, MemoryEstimate, ModelReport, PreflightReport, StepPlan

STATS = DataStats(
    format="chat",
    train_rows=900,
    validation_rows=100,
    train_tokens=123456,
    trainable_tokens=60000,
    validation_tokens=13000,
    truncated_rows=2,
    dropped_rows=0,
    max_row_tokens=512,
    mean_row_tokens=137.17,
    train_sequences=70,
    packing_efficiency=0.97,
)
PLAN = StepPlan(
    epochs=3, batch_size=8, gradient_accumulation_steps=1, steps_per_epoch=113, total_steps=340, warmup_steps=10
)
MEMORY = MemoryEstimate(
    model_parameters=1_235_814_400,
    lora_parameters=11_272_192,
    weights_bytes=2_471_628_800,
    lora_training_bytes=180_355_072,
    activation_bytes=1_000,
    logits_bytes=2_000,
    overhead_bytes=2**30,
    total_bytes=30 * 2**30,
)
PREFLIGHT = PreflightReport(
    job="ft",
    data=STATS,
    plan=PLAN,
    memory=MEMORY,
    model=ModelReport(model_type="qwen3", architecture="Qwen3ForCausalLM"),
)
