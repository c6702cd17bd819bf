"""Sample protocol messages shared by the protocol tests and the operator's decision tests."""

from __future__ import annotations

from kubetune_api.protocol import (
    DataQuality,
    DataStats,
    FitOption,
    FitPlan,
    MemoryEstimate,
    ModelReport,
    PreflightReport,
    QualityCode,
    QualityWarning,
    StepPlan,
    TokenLengths,
)

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

# The planner's verdict for a job that does not fit an H100 as written, and its cheapest fix.
FIT = FitPlan(
    gpu_type="H100-80GB",
    gpu_memory_bytes=81_559 * 2**20,
    job=FitOption(
        method="lora", gpus=1, micro_batch=8, gradient_checkpointing=False, memory_bytes=141 * 2**30, gpu_hours=0.41
    ),
    activation_bytes=60 * 2**30,
    activation_bytes_checkpointed=4 * 2**30,
    fits=False,
    suggestion=FitOption(
        method="qlora-4bit", gpus=1, micro_batch=2, gradient_checkpointing=True, memory_bytes=50 * 2**30, gpu_hours=0.54
    ),
    tokens=1_228_800,
    flops_per_token=4.2e11,
    assumed_mfu=0.35,
    wall_hours=0.41,
)
PREFLIGHT_WITH_FIT = PREFLIGHT.model_copy(update={"fit": FIT})

# A data-quality report with two warnings (kubetune_trainer.quality builds these from real rows).
QUALITY = DataQuality(
    train_lengths=TokenLengths(p50=130, p95=900, max=1400),
    validation_lengths=TokenLengths(p50=120, p95=700, max=800),
    rows=1000,
    truncated_rows=80,
    truncated_share=0.08,
    dropped_rows=0,
    duplicate_rows=3,
    near_duplicate_rows=4,
    leaked_validation_rows=2,
    empty_answers=0,
    rows_per_format={"chat": 1000},
    trainable_tokens=60000,
    warnings=[
        QualityWarning(
            code=QualityCode.TRUNCATED_ROWS,
            message="80 of 1000 rows (8%) are longer than training.maxSeqLength=512 and are cut; "
            "training.maxSeqLength: 960 would fit 95% of training rows (p95 900 tokens)",
            field="training.maxSeqLength",
            example="train.jsonl:17",
            value=0.08,
            threshold=0.05,
        ),
        QualityWarning(
            code=QualityCode.VALIDATION_LEAKAGE,
            message="2 validation rows are also in training (exactly, normalised or near-duplicate; e.g. "
            "val.jsonl:4 and train.jsonl:88), so evaluation overstates the model; remove them from dataset.validation",
            field="dataset.validation",
            example="val.jsonl:4",
            value=2,
            threshold=0,
        ),
    ],
)
PREFLIGHT_WITH_QUALITY = PREFLIGHT_WITH_FIT.model_copy(update={"quality": QUALITY})
