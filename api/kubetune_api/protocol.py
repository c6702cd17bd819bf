"""The messages that cross the pod boundary between the trainer and the operator.

Every message the trainer writes and the operator reads is a model here, and both sides go
through these models: the trainer builds them, the operator parses them. No torch, no
Kubernetes client.

    message           producer (trainer)                 consumer (operator)
    ProgressReport    GET /progress (progress server)    the job's loop, every poll
    RunSummary        termination message of a run       pod outcome -> status / error
    PreflightReport   termination message of preflight   status.preflight
    FAILURES          exception classes (exit codes)     pod outcome -> retry or not

Wire rules, so an operator can read a trainer one release older or newer:
- camelCase on the wire; snake_case names are accepted too (the preflight report of the
  release before this protocol was snake_case);
- a `version` field (PROTOCOL_VERSION); a reader accepts any version, and
- unknown fields are ignored, and unknown enum values (a reason or phase a newer trainer
  added) are kept as plain strings rather than failing the whole message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, computed_field
from pydantic.alias_generators import to_camel

PROTOCOL_VERSION = 1
# The kubelet keeps at most 4096 bytes of a container's termination message.
TERMINATION_MESSAGE_LIMIT_BYTES = 4096


class WireModel(BaseModel):
    """camelCase on the wire, snake_case accepted, unknown fields ignored (forward compatible)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="ignore",
    )

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def to_wire_json(self) -> str:
        return json.dumps(self.to_wire(), separators=(",", ":"))


# -- trainer phases ------------------------------------------------------------------------------


class TrainerPhase(StrEnum):
    """What the trainer process is doing; the operator maps it to the FineTuneJob phase."""

    INITIALIZING = "Initializing"
    STAGING = "Staging"
    PREPARING = "Preparing"
    LOADING = "Loading"
    EVALUATING = "Evaluating"
    RUNNING = "Running"
    CHECKPOINTING = "Checkpointing"
    EXPORTING = "Exporting"
    DONE = "Done"


# -- failure reasons -----------------------------------------------------------------------------


class FailureReason(StrEnum):
    """CamelCase reasons of status.error.reason, Events and failure metrics."""

    INVALID_SPEC = "InvalidSpec"
    DATASET_INVALID = "DatasetInvalid"
    MODEL_INVALID = "ModelInvalid"
    NOT_FOUND = "NotFound"
    S3_ACCESS_DENIED = "S3AccessDenied"
    USER_ERROR = "UserError"
    STORAGE_ERROR = "StorageError"
    GPU_OOM = "GPUOOM"
    EXPORT_FAILED = "ExportFailed"
    INFRASTRUCTURE_ERROR = "InfrastructureError"
    PREEMPTED = "Preempted"
    OOM_KILLED = "OOMKilled"
    IMAGE_PULL_BACK_OFF = "ImagePullBackOff"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    KILLED = "Killed"
    CRASHED = "Crashed"
    JOB_FAILED = "JobFailed"
    PREFLIGHT_FAILED = "PreflightFailed"
    UNSUPPORTED_MODEL = "UnsupportedModel"
    WILL_NOT_FIT = "WillNotFit"
    DATA_QUALITY_FAILED = "DataQualityFailed"


# A reason, phase or status this release does not know (a newer trainer's) stays a plain
# string instead of failing the whole message: the enum when known, else the string.
OpenFailureReason = Annotated[FailureReason | str, Field(union_mode="left_to_right")]
OpenTrainerPhase = Annotated[TrainerPhase | str, Field(union_mode="left_to_right")]


class ErrorKind(StrEnum):
    USER = "user"  # the spec, data, credentials or URI must change
    INFRASTRUCTURE = "infrastructure"  # may pass on its own: storage, nodes, preemption
    # kubetune's own limit (an architecture it cannot train yet): not the user's mistake, and
    # not transient either, so never retried; the message says what would be needed.
    UNSUPPORTED = "unsupported"


@dataclass(frozen=True)
class FailureInfo:
    """One row of the failure table."""

    reason: FailureReason
    exit_code: int | None  # the trainer's exit code; None when only the operator observes it
    kind: ErrorKind
    retryable: bool  # whether a new attempt (resuming from a checkpoint) can help
    advice: str

    @property
    def user_error(self) -> bool:
        return self.kind is ErrorKind.USER


USER, INFRA = ErrorKind.USER, ErrorKind.INFRASTRUCTURE
SIGTERM_EXIT_CODE = 143  # 128 + SIGTERM: the code Kubernetes expects from a stopped container
SIGKILL_EXIT_CODE = 137
USER_EXIT_CODES = range(10, 20)
INFRASTRUCTURE_EXIT_CODES = range(20, 30)
UNSUPPORTED_EXIT_CODES = range(30, 40)

R = FailureReason
_TABLE = [  # reason, trainer exit code, kind, retried, advice
    FailureInfo(R.USER_ERROR, 10, USER, False, "Fix the FineTuneJob or its inputs; a retry cannot help."),
    FailureInfo(R.INVALID_SPEC, 11, USER, False, "Fix the field named in the message and apply the job again."),
    FailureInfo(R.DATASET_INVALID, 12, USER, False, "Fix the rows named (file and line) and upload the dataset again."),
    FailureInfo(
        R.MODEL_INVALID, 13, USER, False, "Point baseModel.uri at a Hugging Face model folder with a fast tokenizer."
    ),
    FailureInfo(R.NOT_FOUND, 14, USER, False, "Check the URI named in the message: the bucket or key does not exist."),
    FailureInfo(
        R.S3_ACCESS_DENIED, 15, USER, False, "Grant the trainer's credentials access to the URI named, or fix them."
    ),
    FailureInfo(
        R.INFRASTRUCTURE_ERROR, 20, INFRA, True, "Retried automatically; check the trainer's log if it repeats."
    ),
    FailureInfo(
        R.STORAGE_ERROR, 21, INFRA, True, "Retried automatically; check the S3 endpoint's health if it repeats."
    ),
    FailureInfo(
        R.GPU_OOM, 22, INFRA, False, "Lower training.batchSize or maxSeqLength, or enable gradientCheckpointing."
    ),
    FailureInfo(
        R.EXPORT_FAILED, 23, INFRA, True, "Retried automatically; training is not repeated (a final checkpoint exists)."
    ),
    FailureInfo(
        R.PREEMPTED, SIGTERM_EXIT_CODE, INFRA, True, "Retried automatically from the checkpoint saved on SIGTERM."
    ),
    FailureInfo(R.KILLED, SIGKILL_EXIT_CODE, INFRA, True, "Retried automatically from the latest checkpoint."),
    FailureInfo(
        R.CRASHED, None, INFRA, True, "Retried automatically; the trainer exited without classifying the error."
    ),
    FailureInfo(R.OOM_KILLED, None, INFRA, False, "Raise resources.memory: the trainer ran out of host memory."),
    FailureInfo(
        R.IMAGE_PULL_BACK_OFF, None, USER, False, "Fix spec.image or the operator's trainer image, or the pull secret."
    ),
    FailureInfo(R.DEADLINE_EXCEEDED, None, USER, False, "Raise activeDeadlineSeconds, or train fewer steps."),
    FailureInfo(
        R.BACKOFF_LIMIT_EXCEEDED, None, INFRA, False, "Every attempt failed; the message names the last reason."
    ),
    FailureInfo(R.JOB_FAILED, None, INFRA, True, "The Job failed without a pod outcome; retried automatically."),
    FailureInfo(R.PREFLIGHT_FAILED, None, USER, False, "The preflight Job failed; its pod log says why."),
    FailureInfo(
        R.WILL_NOT_FIT,
        None,
        USER,
        False,
        "Make the change status.preflight.fit.suggestion names, or set preflight.enforceFit: false to try anyway.",
    ),
    FailureInfo(
        R.DATA_QUALITY_FAILED,
        16,
        USER,
        False,
        "Fix what status.preflight.warnings names, or set preflight.failOnWarnings: false to train anyway.",
    ),
    FailureInfo(
        R.UNSUPPORTED_MODEL,
        30,
        ErrorKind.UNSUPPORTED,
        False,
        "kubetune cannot train this architecture yet (docs/models.md lists what it can); the message says why.",
    ),
]
FAILURES: dict[FailureReason, FailureInfo] = {info.reason: info for info in _TABLE}


def failure(reason: FailureReason | str) -> FailureInfo | None:
    """The table row of a reason; None for a reason this release does not know."""
    try:
        return FAILURES[FailureReason(reason)]
    except ValueError:
        return None


def failure_for_exit_code(code: int) -> FailureInfo | None:
    """The trainer failure an exit code stands for; a code a newer trainer added is judged by its range."""
    for info in FAILURES.values():
        if info.exit_code == code:
            return info
    if code in USER_EXIT_CODES:
        return FAILURES[FailureReason.USER_ERROR]
    if code in INFRASTRUCTURE_EXIT_CODES:
        return FAILURES[FailureReason.INFRASTRUCTURE_ERROR]
    if code in UNSUPPORTED_EXIT_CODES:
        return FAILURES[FailureReason.UNSUPPORTED_MODEL]
    return None


# -- the data check and the step plan (preflight report, manifest) -------------------------------


class DataStats(WireModel):
    """What preparing the dataset found: rows, tokens, truncation, packing."""

    format: str = Field(description="The dataset format used (chat, instruction, completion, text).")
    train_rows: int = Field(description="Training rows kept (rows with at least one trainable token).")
    validation_rows: int = Field(description="Validation rows kept.")
    train_tokens: int = Field(description="Tokens in the kept training rows.")
    trainable_tokens: int = Field(description="Tokens that carry a label (completions / assistant turns).")
    validation_tokens: int = Field(description="Tokens in the kept validation rows.")
    truncated_rows: int = Field(description="Rows cut at maxSeqLength (train and validation).")
    dropped_rows: int = Field(description="Rows left with no trainable token after truncation.")
    max_row_tokens: int = Field(description="Tokens in the longest training row.")
    mean_row_tokens: float = Field(description="Mean tokens per training row.")
    train_sequences: int = Field(description="Training sequences after packing.")
    packing_efficiency: float = Field(description="Share of sequence capacity holding real tokens, 0..1.")


class StepPlan(WireModel):
    """How many optimizer steps the run takes, and with which batch."""

    model_config = ConfigDict(frozen=True)

    epochs: int = Field(description="Passes over the training rows.")
    batch_size: int = Field(description="Sequences per device per micro-step.")
    gradient_accumulation_steps: int = Field(description="Micro-steps per optimizer step.")
    steps_per_epoch: int = Field(description="Optimizer steps per epoch.")
    total_steps: int = Field(description="Optimizer steps in the whole run.")
    warmup_steps: int = Field(description="Steps of learning-rate warmup.")


class MemoryEstimate(WireModel):
    """Peak GPU memory of one training rank, in bytes (an estimate: expect ±30 %)."""

    model_parameters: int
    lora_parameters: int
    weights_bytes: int
    lora_training_bytes: int
    activation_bytes: int
    logits_bytes: int
    overhead_bytes: int
    total_bytes: int


class FitOption(WireModel):
    """One way to run the job: its method, GPUs and batch, and what it needs per GPU."""

    method: str = Field(description="lora (bf16 base, replicated), qlora-4bit, qlora-8bit or fsdp (sharded base).")
    gpus: int = Field(description="GPUs in all (ranks).")
    micro_batch: int = Field(description="Sequences per GPU per micro-step.")
    gradient_checkpointing: bool = Field(description="Whether activations are recomputed in the backward pass.")
    memory_bytes: int = Field(description="Estimated peak memory per GPU.")
    gpu_hours: float | None = Field(default=None, description="Estimated GPU-hours (unknown GPU type: none).")


class FitPlan(WireModel):
    """Will the job fit its GPUs, what would make it fit, and how long it takes: from config.json and
    the data's token counts only (issue 11's planner; formulas in docs/scaling.md)."""

    gpu_type: str | None = Field(default=None, description="The GPU type planned for; None when the job names none.")
    gpu_memory_bytes: int | None = Field(default=None, description="That type's memory per GPU.")
    job: FitOption = Field(description="The job as written.")
    activation_bytes: int = Field(description="Activations per GPU as written.")
    activation_bytes_checkpointed: int = Field(description="Activations per GPU with gradient checkpointing.")
    fits: bool | None = Field(default=None, description="Whether the job fits (None: unknown GPU type).")
    suggestion: FitOption | None = Field(default=None, description="The cheapest change that fits, when it does not.")
    tokens: int = Field(description="Tokens the run feeds the model, padding of packs included.")
    flops_per_token: float = Field(description="Model FLOPs per token of a training step as written.")
    assumed_mfu: float | None = Field(default=None, description="Model FLOPs utilisation assumed for the GPU type.")
    wall_hours: float | None = Field(default=None, description="Estimated training time (unknown GPU type: none).")


class PackingDecision(WireModel):
    """Whether rows were packed, and why not when they were asked to be."""

    requested: bool = Field(description="training.packing as the spec asked.")
    used: bool = Field(description="Whether rows were packed in this run.")
    reason: str | None = Field(default=None, description="Why packing was turned off, when it was.")


class ModelReport(WireModel):
    """What the trainer made of the base model: its architecture and the choices that depend on it."""

    model_type: str = Field(description="config.json's model_type, e.g. llama, qwen3_moe.")
    architecture: str = Field(description="The transformers class trained, e.g. LlamaForCausalLM.")
    attention: str | None = Field(
        default=None,
        description="The attention implementation loaded: flash_attention_2,"
        " kubetune_packed_sdpa (SDPA per packed row), sdpa, flex_attention, eager.",
    )
    packing: PackingDecision | None = Field(default=None, description="Packing as run (set once the model is loaded).")


class QualityCode(StrEnum):
    """What a data-quality warning is about; thresholds in docs/data.md#quality."""

    TRUNCATED_ROWS = "TruncatedRows"
    DROPPED_ROWS = "DroppedRows"
    DUPLICATE_ROWS = "DuplicateRows"
    NEAR_DUPLICATE_ROWS = "NearDuplicateRows"
    VALIDATION_LEAKAGE = "ValidationLeakage"
    EMPTY_ANSWERS = "EmptyAnswers"
    MIXED_FORMATS = "MixedFormats"
    FEW_TRAINABLE_TOKENS = "FewTrainableTokens"


OpenQualityCode = Annotated[QualityCode | str, Field(union_mode="left_to_right")]


class QualityWarning(WireModel):
    """One finding of the data-quality report that crosses its documented threshold."""

    code: OpenQualityCode = Field(description="What the warning is about (a QualityCode).")
    message: str = Field(description="What was found and what to change, naming the spec field.")
    field: str | None = Field(default=None, description="The spec field to change, e.g. training.maxSeqLength.")
    example: str | None = Field(default=None, description="A row that shows it, as file:line.")
    value: float | None = Field(default=None, description="The measured value (a count or a share).")
    threshold: float | None = Field(default=None, description="The documented threshold it crossed.")


class TokenLengths(WireModel):
    """Tokens per row as rendered, before truncation to maxSeqLength."""

    p50: int = Field(description="Median tokens per row.")
    p95: int = Field(description="95th percentile of tokens per row.")
    max: int = Field(description="Tokens in the longest row.")


class DataQuality(WireModel):
    """Is the data good, not only well-formed: lengths, truncation, duplicates, leakage, empty answers.

    Computed by kubetune_trainer.quality from the rows and their token counts; methods and the
    warning thresholds in docs/data.md#quality."""

    train_lengths: TokenLengths = Field(description="Training rows' tokens before truncation.")
    validation_lengths: TokenLengths | None = Field(default=None, description="The same for validation rows.")
    rows: int = Field(description="Rows checked, train and validation.")
    truncated_rows: int = Field(description="Rows longer than maxSeqLength (train and validation).")
    truncated_share: float = Field(description="truncatedRows / rows, 0..1.")
    dropped_rows: int = Field(description="Rows left with no trainable token after truncation.")
    duplicate_rows: int = Field(description="Training rows identical to an earlier training row.")
    near_duplicate_rows: int = Field(
        description="Training rows that are not exact copies but near-duplicates of an earlier one."
    )
    leaked_validation_rows: int = Field(
        description="Validation rows also in training: exactly, normalised or as a near-duplicate."
    )
    empty_answers: int = Field(
        description="Completions and assistant turns with no letter, digit or symbol (e.g. '.', a zero-width space)."
    )
    rows_per_format: dict[str, int] = Field(description="Rows by the format their keys show, per row.")
    trainable_tokens: int = Field(description="Tokens that carry a label after truncation (training rows).")
    warnings: list[QualityWarning] = Field(default_factory=list, description="Findings over their thresholds.")


def data_quality_failure(warnings: list[tuple[str, str]]) -> str:
    """The DataQualityFailed message (operator and `kubetune run` alike): every (code, message)."""
    listed = "; ".join(f"{code}: {message}" for code, message in warnings)
    return f"preflight.failOnWarnings is true and the data-quality report has {len(warnings)} warning(s): {listed}"


class PreflightReport(WireModel):
    """The preflight Job's termination message (and `kubetune validate --json`)."""

    version: int = Field(default=PROTOCOL_VERSION, description="Wire version of this message.")
    status: Literal["Validated"] = Field(default="Validated", description="Always Validated (failures are RunSummary).")
    job: str = Field(default="", description="The FineTuneJob's name.")
    data: DataStats = Field(description="What preparing the dataset found.")
    plan: StepPlan = Field(description="The optimizer steps planned for the training hardware.")
    memory: MemoryEstimate | None = Field(default=None, description="GPU memory estimate (when planning for a GPU).")
    model: ModelReport | None = Field(default=None, description="The base model's architecture, from config.json.")
    fit: FitPlan | None = Field(default=None, description="Fit and time plan (when planning for a GPU).")
    quality: DataQuality | None = Field(default=None, description="The data-quality report and its warnings.")

    def to_termination_message(self, limit: int = TERMINATION_MESSAGE_LIMIT_BYTES) -> str:
        """Compact JSON of at most `limit` bytes that is still valid JSON (the kubelet cuts at 4096).

        A report the kubelet cut would not parse, and the operator would lose the warnings that
        preflight.failOnWarnings acts on: so warning messages are shortened first (codes, fields
        and examples stay), then the fit plan and memory estimate are dropped."""
        raw = self.to_wire()

        def size() -> int:
            return len(json.dumps(raw, separators=(",", ":"), ensure_ascii=False).encode())

        warnings = raw.get("quality", {}).get("warnings", [])
        for keep in (200, 120, 60, 0):
            if size() <= limit:
                break
            for warning in warnings:
                if len(warning["message"]) > keep:
                    warning["message"] = warning["message"][:keep] + "…" if keep else ""
        for optional in ("fit", "memory", "model"):
            if size() <= limit:
                break
            raw.pop(optional, None)
        return json.dumps(raw, separators=(",", ":"), ensure_ascii=False)


# -- the run summary (termination message) -------------------------------------------------------


class EvalResult(WireModel):
    """One evaluation of the model on the validation rows."""

    loss: float | None = Field(default=None, description="Mean loss per trainable token.")
    perplexity: float | None = None
    tokens: int | None = Field(default=None, description="Trainable tokens evaluated.")
    exact_match: float | None = Field(default=None, description="Share of generated answers equal to the reference.")
    samples: int | None = Field(default=None, description="Rows generated for the generation metrics.")
    metric: str | None = Field(default=None, description="The generation metric reported first (evaluation.metric).")
    scores: dict[str, float] | None = Field(
        default=None, description="Every generation metric: the share of generated answers it accepts."
    )


class Evaluations(WireModel):
    baseline: EvalResult | None = Field(default=None, description="The base model, before training.")
    finetuned: EvalResult | None = Field(default=None, description="The model with the trained adapter.")


class GateReason(StrEnum):
    """Why the evaluation gate passed or failed (the EvaluationPassed condition's reason)."""

    THRESHOLD_MET = "ThresholdMet"  # the threshold met, and the baseline beaten when asked
    BEAT_BASELINE = "BeatBaseline"  # no threshold; better than the base model
    THRESHOLD_NOT_MET = "ThresholdNotMet"
    NOT_BETTER_THAN_BASELINE = "NotBetterThanBaseline"
    NOT_EVALUATED = "NotEvaluated"  # no value for the metric (no validation rows kept, no generation)
    BASELINE_NOT_EVALUATED = "BaselineNotEvaluated"  # mustBeatBaseline, but no baseline value


class GateResult(WireModel):
    """The evaluation gate's verdict on the fine-tuned model (kubetune_api.gate.judge_gate)."""

    passed: bool = Field(description="Whether the adapter met the gate. It is published either way.")
    metric: str = Field(description="The metric judged (evaluation.gate.metric).")
    value: float | None = Field(default=None, description="The fine-tuned model's value of the metric.")
    threshold: float | None = Field(default=None, description="The bar: a maximum for losses, a minimum for scores.")
    baseline: float | None = Field(default=None, description="The base model's value of the metric.")
    must_beat_baseline: bool = Field(default=False, description="Whether the baseline had to be beaten.")
    reason: Annotated[GateReason | str, Field(union_mode="left_to_right")] = Field(
        description="CamelCase: ThresholdMet, BeatBaseline, ThresholdNotMet, NotBetterThanBaseline, NotEvaluated, "
        "BaselineNotEvaluated."
    )
    message: str = Field(default="", description="One sentence with the numbers.")


class RunStatus(StrEnum):
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    PREEMPTED = "Preempted"


OpenRunStatus = Annotated[RunStatus | str, Field(union_mode="left_to_right")]


class CheckpointRecord(WireModel):
    step: int = Field(description="Optimizer step of the checkpoint.")
    uri: str = Field(description="Where it is stored.")
    time: float = Field(description="When it was completed (unix seconds).")


class RunSummary(WireModel):
    """How a trainer run (or a failed preflight) ended: the termination message, also printed on stdout."""

    version: int = Field(default=PROTOCOL_VERSION, description="Wire version of this message.")
    status: OpenRunStatus = Field(description="Succeeded, Failed or Preempted (SIGTERM, checkpoint saved).")
    job: str = Field(default="", description="The FineTuneJob's name.")
    reason: OpenFailureReason | None = Field(default=None, description="Why it failed (a FailureReason).")
    message: str | None = Field(default=None, description="What went wrong, naming the field, file or URI.")
    exit_code: int = Field(default=0, description="The process exit code (see the failure table).")
    user_error: bool | None = Field(default=None, description="True when the user must change something.")
    step: int = Field(default=0, description="Optimizer steps done.")
    total_steps: int = Field(default=0, description="Optimizer steps planned.")
    trained_tokens: int = Field(default=0, description="Tokens trained on (non-padding).")
    train_loss: float | None = Field(default=None, description="The last training loss.")
    eval: Evaluations | None = Field(default=None, description="Base and fine-tuned evaluations.")
    gate: GateResult | None = Field(default=None, description="The evaluation gate's verdict, when the spec has one.")
    adapter_uri: str | None = Field(default=None, description="The published adapter.")
    manifest_uri: str | None = Field(default=None, description="The provenance manifest.json.")
    model: ModelReport | None = Field(default=None, description="The base model as trained: attention and packing.")
    # Also here, not only in /progress: a run shorter than the operator's poll interval would
    # otherwise finish with no checkpoint in status (seen on a loaded CI machine).
    checkpoints: list[CheckpointRecord] = Field(
        default_factory=list, description="This run's latest complete checkpoints, oldest first."
    )
    duration_seconds: float = Field(default=0.0, description="Wall time of the run.")
    already_complete: bool = Field(default=False, description="The output held a finished run; nothing retrained.")

    def to_termination_message(self, limit: int = TERMINATION_MESSAGE_LIMIT_BYTES) -> str:
        """Compact JSON of at most `limit` bytes that is still valid JSON.

        The message is shortened first, then optional detail (eval, URIs) is dropped. The gate's
        verdict goes last of all: it is small, and without it the operator cannot say whether the
        adapter passed (with `eval` it could judge again, so `eval` goes before it).
        """
        raw = {key: value for key, value in self.to_wire().items() if value not in ({}, [])}

        def size(obj: dict[str, Any]) -> int:
            return len(json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode())

        if size(raw) > limit and self.message:
            excess = size(raw) - limit
            keep = max(0, len(self.message.encode()) - excess - 16)
            raw["message"] = self.message.encode()[:keep].decode(errors="ignore") + "…"
        while size(raw) > limit and raw.get("checkpoints"):  # the oldest first: status keeps the latest
            raw["checkpoints"] = raw["checkpoints"][1:]
            if not raw["checkpoints"]:
                raw.pop("checkpoints")
        for optional in ("model", "eval", "adapterUri", "manifestUri", "message", "gate"):
            if size(raw) <= limit:
                break
            raw.pop(optional, None)
        return json.dumps(raw, separators=(",", ":"), ensure_ascii=False)


def parse_termination_message(text: str | None) -> RunSummary | PreflightReport | None:
    """A pod's termination message as the message it is; None when it is not one of ours
    (e.g. a log tail from `FallbackToLogsOnError`)."""
    if not text:
        return None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(raw, dict):
        return None
    try:
        if raw.get("status") == "Validated":
            return PreflightReport.model_validate(raw)
        return RunSummary.model_validate(raw)
    except ValidationError:
        return None


# -- live progress (GET /progress) ----------------------------------------------------------------


class ProgressReport(WireModel):
    """The trainer's state right now, served as JSON at /progress (same port as /metrics)."""

    version: int = Field(default=PROTOCOL_VERSION, description="Wire version of this message.")
    phase: OpenTrainerPhase = Field(default=TrainerPhase.INITIALIZING, description="What the trainer is doing.")
    step: int = Field(default=0, description="Optimizer steps done.")
    total_steps: int = Field(default=0, description="Optimizer steps planned.")
    epoch: float = Field(default=0.0, description="Fractional epoch.")
    train_loss: float | None = Field(default=None, description="Latest training loss (per trainable token).")
    eval_loss: float | None = Field(default=None, description="Evaluation loss of the fine-tuned model.")
    baseline_eval_loss: float | None = Field(default=None, description="Evaluation loss of the base model.")
    learning_rate: float | None = Field(default=None, description="Current learning rate.")
    tokens_per_second: float | None = Field(default=None, description="Throughput over recent steps.")
    trained_tokens: int = Field(default=0, description="Tokens trained on so far (non-padding).")
    eta_seconds: float | None = Field(default=None, description="Estimated seconds until training ends.")
    checkpoints: list[CheckpointRecord] = Field(default_factory=list, description="Checkpoints of this run.")
    model: ModelReport | None = Field(default=None, description="The base model as loaded: attention and packing.")
    last_update_time: float | None = Field(default=None, description="Unix seconds of the last update.")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def progress_ratio(self) -> float:
        """Fraction of planned steps done, 0..1."""
        return round(min(1.0, self.step / self.total_steps), 4) if self.total_steps else 0.0
