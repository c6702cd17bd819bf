"""The FineTuneJob status: the one source of truth for the CRD's status schema.

The operator is its only writer; `kubectl explain finetunejob.status --recursive` reads the
descriptions below. Field names are snake_case in Python and camelCase on the wire. Times
are metav1.Time: RFC 3339 in UTC, whole seconds, `Z`.

Unknown fields are kept when read (`extra="allow"`): a newer operator may have written
them, and rewriting the status must not silently drop them before the apiserver prunes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer
from pydantic.alias_generators import to_camel

from kubetune_api.spec import FineTuneJobSpec

# -- time ----------------------------------------------------------------------------------------


def rfc3339(moment: datetime) -> str:
    """metav1.Time's wire form: 2026-12-03T10:04:05Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str | None) -> datetime | None:
    """RFC 3339 (`Z` or an offset) to an aware datetime; None when absent or malformed."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _to_datetime(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    return value


Time = Annotated[
    datetime,
    BeforeValidator(_to_datetime),
    PlainSerializer(rfc3339, return_type=str, when_used="json"),
]


class _Status(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="allow",
    )


# -- phase and conditions ------------------------------------------------------------------------


class Phase(StrEnum):
    PENDING = "Pending"
    VALIDATING = "Validating"
    QUEUED = "Queued"
    SUSPENDED = "Suspended"
    INITIALIZING = "Initializing"
    RUNNING = "Running"
    EXPORTING = "Exporting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"


TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED})


class ConditionType(StrEnum):
    """In the order `kubectl describe` lists them."""

    SPEC_VALID = "SpecValid"
    DATA_VALIDATED = "DataValidated"
    ADMITTED = "Admitted"
    RUNNING = "Running"
    CHECKPOINT_SAVED = "CheckpointSaved"
    COMPLETE = "Complete"
    FAILED = "Failed"
    SUSPENDED = "Suspended"
    UNSCHEDULABLE = "Unschedulable"
    SPEC_APPLIED = "SpecApplied"
    # True when the trainer turned packing off because this architecture lets packed rows see
    # each other (a Warning): the run pads instead, which is correct but slower.
    PACKING_DISABLED = "PackingDisabled"
    # Whether the fine-tuned adapter met spec.evaluation.gate (absent without a gate). False is not
    # a failure of the job: the run worked and the adapter is published, it is just not good enough.
    EVALUATION_PASSED = "EvaluationPassed"
    # True once spec.cancel stopped the job. Its own type, not Failed: a cancellation is the
    # user's choice, not an error, so `kubectl wait --for=condition=Failed` and the failure
    # alerts stay about failures (as batch/v1 keeps Suspended apart from Failed).
    CANCELLED = "Cancelled"


# The reason of the Cancelled condition and of its Event (the delete path posts the same Event).
USER_CANCELLED = "UserCancelled"


class Condition(_Status):
    """A metav1.Condition."""

    type: str = Field(max_length=316, description="Condition type, e.g. DataValidated (see ConditionType).")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(max_length=1024, description="CamelCase reason for the last transition.")
    message: str = Field(default="", max_length=32768, description="Human-readable details.")
    observed_generation: int | None = Field(default=None, ge=0, description="The spec generation it describes.")
    last_transition_time: Time = Field(description="When status last changed (not reason or message).")


# -- reports copied into status ------------------------------------------------------------------


class MemoryFit(StrEnum):
    FITS = "Fits"
    MAY_NOT_FIT = "MayNotFit"


class FitStatus(_Status):
    """The preflight's fit and time plan for the job's GPUs, and its cost (operator prices)."""

    gpu_type: str | None = Field(default=None, description="GPU type planned for (from resources.nodeSelector).")
    fits: bool | None = Field(default=None, description="Whether the estimate fits that GPU (unknown type: unset).")
    method: str | None = Field(default=None, description="lora, qlora-4bit or qlora-8bit, as written.")
    memory_per_gpu_bytes: int | None = Field(default=None, description="Estimated peak memory per GPU, as written.")
    suggestion: str | None = Field(default=None, description="The cheapest change that fits, when the job does not.")
    gpu_hours: float | None = Field(default=None, description="Estimated GPU-hours (the GPU-Hours column).")
    wall_hours: float | None = Field(default=None, description="Estimated hours of training.")
    estimated_cost: float | None = Field(
        default=None, description="GPU-hours times the operator's price for the GPU type; unset when unknown."
    )
    currency: str | None = Field(default=None, description="Currency of estimatedCost (the operator's setting).")


class DataQualityStatus(_Status):
    """The preflight's data-quality numbers (methods and thresholds in docs/data.md#quality)."""

    p50_row_tokens: int | None = Field(default=None, description="Median tokens per training row, before truncation.")
    p95_row_tokens: int | None = Field(default=None, description="95th percentile of the same.")
    max_row_tokens: int | None = Field(
        default=None, description="Tokens in the longest training row, before truncation."
    )
    truncated_share: float | None = Field(default=None, description="Share of rows cut at maxSeqLength, 0..1.")
    duplicate_rows: int | None = Field(default=None, description="Training rows repeating an earlier one exactly.")
    near_duplicate_rows: int | None = Field(
        default=None, description="Training rows nearly repeating an earlier one (normalised text or MinHash)."
    )
    leaked_validation_rows: int | None = Field(default=None, description="Validation rows also in training.")
    empty_answers: int | None = Field(
        default=None, description="Rows with a completion or assistant turn without a letter, digit or symbol."
    )
    rows_per_format: dict[str, int] | None = Field(default=None, description="Rows by the format their keys show.")


class PreflightWarning(_Status):
    """A data-quality finding over its documented threshold (also posted as a Warning Event)."""

    code: str = Field(
        description="What it is about: TruncatedRows, DroppedRows, DuplicateRows, NearDuplicateRows, "
        "ValidationLeakage, EmptyAnswers, MixedFormats or FewTrainableTokens."
    )
    message: str = Field(default="", max_length=1024, description="What was found and what to change.")
    field: str | None = Field(default=None, description="The spec field to change, e.g. training.maxSeqLength.")
    example: str | None = Field(default=None, description="A row that shows it, as file:line.")


class PreflightStatus(_Status):
    """What the CPU preflight Job found, before any GPU was requested."""

    format: str | None = Field(default=None, description="Dataset format used (chat, instruction, completion, text).")
    train_rows: int | None = Field(default=None, description="Training rows kept.")
    validation_rows: int | None = Field(default=None, description="Validation rows kept.")
    train_tokens: int | None = Field(default=None, description="Tokens in the training rows.")
    trainable_tokens: int | None = Field(default=None, description="Tokens that carry a label.")
    truncated_rows: int | None = Field(default=None, description="Rows cut at maxSeqLength.")
    dropped_rows: int | None = Field(default=None, description="Rows with no trainable token left after truncation.")
    packing_efficiency: float | None = Field(default=None, description="Share of packed capacity holding tokens, 0..1.")
    epochs: int | None = Field(default=None, description="Planned epochs.")
    batch_size: int | None = Field(default=None, description="Planned sequences per device per micro-step.")
    estimated_steps: int | None = Field(default=None, description="Planned optimizer steps.")
    estimated_gpu_memory_bytes: int | None = Field(default=None, description="Estimated peak memory of one GPU rank.")
    memory_fit: MemoryFit | None = Field(
        default=None,
        description="Fits or MayNotFit, against the GPU type's memory, else the operator's KUBETUNE_GPU_MEMORY_GIB.",
    )
    fit: FitStatus | None = Field(default=None, description="Fit, time and cost plan for the job's GPUs.")
    quality: DataQualityStatus | None = Field(default=None, description="The data-quality report's numbers.")
    warnings: list[PreflightWarning] | None = Field(
        default=None,
        description="Data-quality findings over their thresholds; spec.preflight.failOnWarnings fails the job on any.",
    )


class ProgressStatus(_Status):
    """The trainer's live progress, copied from its /progress endpoint."""

    percent: str | None = Field(default=None, description="Steps done, e.g. 42% (the PROGRESS column).")
    step: int | None = Field(default=None, description="Optimizer steps done.")
    total_steps: int | None = Field(default=None, description="Optimizer steps planned.")
    epoch: float | None = Field(default=None, description="Fractional epoch.")
    eta_seconds: int | None = Field(default=None, description="Estimated seconds until training ends.")
    eta: str | None = Field(default=None, description="The same, for people: 45s, 12m, 3h05m (the ETA column).")
    tokens_per_second: float | None = Field(default=None, description="Training throughput (non-padding tokens).")
    last_update_time: Time | None = Field(default=None, description="When the trainer last reported.")


class MetricsStatus(_Status):
    train_loss: float | None = Field(default=None, description="Latest training loss (the LOSS column).")
    eval_loss: float | None = Field(default=None, description="Evaluation loss of the fine-tuned model.")
    baseline_eval_loss: float | None = Field(default=None, description="Evaluation loss of the base model.")
    learning_rate: float | None = Field(default=None, description="Current learning rate.")


class CheckpointStatus(_Status):
    step: int = Field(description="Optimizer step of the checkpoint.")
    uri: str = Field(description="Where it is stored; the latest is resumed from on a retry.")
    time: Time | None = Field(default=None, description="When it was completed.")


class ServingStatus(_Status):
    """Ready-to-run serving of the published adapter (docs/serving.md explains each snippet)."""

    vllm_command: str | None = Field(
        default=None,
        max_length=4096,
        description="Shell lines: copy the base model and the adapter locally, then `vllm serve <base> "
        "--enable-lora --max-lora-rank R --lora-modules <name>=<adapter dir>`. Unset when vLLM cannot load it.",
    )
    kserve_inference_service: str | None = Field(
        default=None,
        max_length=8192,
        description="A KServe InferenceService (YAML; huggingface runtime, vLLM backend) serving the base "
        "model with the adapter. Unset when vLLM cannot load the adapter.",
    )
    merged_vllm_command: str | None = Field(
        default=None,
        max_length=4096,
        description="With output.mergeAdapter: `vllm serve` of the merged weights, without LoRA.",
    )
    vllm_problems: list[Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=list,
        max_length=8,
        description="Why vLLM's LoRA loader would refuse the adapter (e.g. DoRA); empty when it loads.",
    )


class ArtifactsStatus(_Status):
    output_uri: str | None = Field(default=None, description="spec.output.uri.")
    adapter_uri: str | None = Field(default=None, description="The published adapter (PEFT format).")
    manifest_uri: str | None = Field(default=None, description="manifest.json: provenance of the result.")
    serving: ServingStatus | None = Field(
        default=None, description="Ready-to-run vLLM and KServe snippets for the adapter (set on success)."
    )


class ModelStatus(_Status):
    """The base model as the trainer loaded it."""

    model_type: str | None = Field(default=None, description="config.json's model_type, e.g. llama, qwen3_moe.")
    architecture: str | None = Field(default=None, description="The transformers class, e.g. LlamaForCausalLM.")
    attention: str | None = Field(
        default=None,
        description="Attention implementation loaded: flash_attention_2,"
        " kubetune_packed_sdpa (SDPA per packed row), sdpa, flex_attention or eager.",
    )
    packing: bool | None = Field(default=None, description="Whether rows are packed in this run.")
    packing_reason: str | None = Field(
        default=None, max_length=1024, description="Why packing was turned off although the spec asked for it."
    )


class GateOutcome(StrEnum):
    PASSED = "Passed"
    FAILED = "Failed"


class EvaluationStatus(_Status):
    """The fine-tuned model against the base model on the validation rows, and the gate's verdict."""

    result: GateOutcome | None = Field(
        default=None,
        description="Passed or Failed: the evaluation gate's verdict (the EVAL column); unset without a gate.",
    )
    metric: str | None = Field(default=None, description="The metric the gate judged (spec.evaluation.gate.metric).")
    value: float | None = Field(default=None, description="The fine-tuned model's value of the gate's metric.")
    threshold: float | None = Field(
        default=None, description="The gate's bar: a maximum for losses, a minimum for scores."
    )
    baseline: float | None = Field(default=None, description="The base model's value of the gate's metric.")
    must_beat_baseline: bool | None = Field(
        default=None, description="Whether the gate required beating the base model."
    )
    reason: str | None = Field(
        default=None,
        description="Why it passed or failed (the EvaluationPassed condition's reason): ThresholdMet, BeatBaseline, "
        "ThresholdNotMet, NotBetterThanBaseline, NotEvaluated or BaselineNotEvaluated.",
    )
    message: str | None = Field(default=None, max_length=1024, description="The verdict in one sentence, with numbers.")
    eval_loss: float | None = Field(default=None, description="Evaluation loss of the fine-tuned model.")
    baseline_eval_loss: float | None = Field(default=None, description="Evaluation loss of the base model.")
    perplexity: float | None = Field(default=None, description="Perplexity of the fine-tuned model.")
    baseline_perplexity: float | None = Field(default=None, description="Perplexity of the base model.")
    generation_metric: str | None = Field(
        default=None, description="The generation metric reported first (spec.evaluation.metric), when generating."
    )
    score: float | None = Field(default=None, description="The fine-tuned model's share of answers it accepts.")
    baseline_score: float | None = Field(default=None, description="The base model's share of answers it accepts.")
    samples: int | None = Field(default=None, description="Validation rows generated for the generation metrics.")


class ErrorStatus(_Status):
    reason: str = Field(description="CamelCase failure reason, e.g. DatasetInvalid, GPUOOM, BackoffLimitExceeded.")
    message: str = Field(default="", max_length=4096, description="What went wrong, naming the field, file or URI.")
    exit_code: int | None = Field(default=None, description="The trainer's exit code, when a pod ended the job.")


class LastFailureStatus(_Status):
    attempt: int = Field(description="The attempt that failed.")
    reason: str = Field(description="Why it failed.")
    message: str = Field(default="", max_length=1024, description="Details.")


class FineTuneJobStatus(_Status):
    """Observed state, written by the operator: phase, conditions, progress, metrics, artifacts, error."""

    phase: Phase | None = Field(default=None, description="Lifecycle phase (the PHASE column).")
    message: str | None = Field(default=None, description="One human sentence about the phase.")
    observed_generation: int | None = Field(default=None, description="The spec generation this status describes.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="metav1.Conditions: SpecValid, SpecApplied, DataValidated, Admitted, Suspended, "
        "Unschedulable, Running, CheckpointSaved, PackingDisabled, EvaluationPassed, Complete, Failed, Cancelled.",
    )
    accepted_spec: FineTuneJobSpec | None = Field(
        default=None,
        description="The spec that runs, defaults filled in, frozen at admission: only suspend, cancel, "
        "backoffLimit, activeDeadlineSeconds and ttlSecondsAfterFinished follow later edits.",
    )
    preflight: PreflightStatus | None = Field(default=None, description="The preflight Job's report.")
    progress: ProgressStatus | None = Field(default=None, description="Live training progress.")
    metrics: MetricsStatus | None = Field(default=None, description="Losses and learning rate.")
    checkpoints: list[CheckpointStatus] = Field(
        default_factory=list, description="The latest complete checkpoints, oldest first (bounded)."
    )
    artifacts: ArtifactsStatus | None = Field(default=None, description="Where the results are.")
    model: ModelStatus | None = Field(default=None, description="The base model as loaded: attention, packing.")
    evaluation: EvaluationStatus | None = Field(
        default=None, description="The final evaluation and the evaluation gate's verdict (spec.evaluation.gate)."
    )
    error: ErrorStatus | None = Field(default=None, description="The failure that ended the job.")
    attempts: int | None = Field(default=None, ge=0, description="Trainer attempts started (retries + 1).")
    world_size: int | None = Field(
        default=None, ge=1, description="Training processes: resources.gpus (at least 1) x resources.nodes."
    )
    last_failure: LastFailureStatus | None = Field(default=None, description="The failure that caused the last retry.")
    start_time: Time | None = Field(default=None, description="When the first trainer attempt started.")
    completion_time: Time | None = Field(default=None, description="When the job succeeded or failed.")
    trained_tokens: int | None = Field(default=None, description="Tokens trained on (non-padding).")
    gpu_seconds: int | None = Field(default=None, description="GPU time used by trainer pods, all attempts.")

    def to_wire(self) -> dict[str, Any]:
        """The JSON the operator writes: absent rather than null, and no empty lists."""
        raw = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        return {key: value for key, value in raw.items() if value != []}

    def condition(self, type_: ConditionType) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)

    def condition_is(self, type_: ConditionType) -> bool:
        found = self.condition(type_)
        return found is not None and found.status == "True"
