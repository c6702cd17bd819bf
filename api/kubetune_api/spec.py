"""The FineTuneJob spec: the one source of truth for the CRD schema.

Both the operator and the trainer import this module; it must never import torch.
Field names are snake_case in Python and camelCase on the wire (Kubernetes API
conventions). Every field carries a description because it becomes the text of
`kubectl explain finetunejob.spec...`.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

API_GROUP = "kubetune.io"
API_VERSION = "v1alpha1"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"

# A URI names a scheme we can stage from, or (local mode only) a plain path.
# s3:// bucket names follow the AWS naming rules closely enough to catch typos.
URI_PATTERN = r"^((s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?)|((file|pvc)://.+)|([^:]+))$"
_URI_RE = re.compile(URI_PATTERN)
_S3_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
SUPPORTED_URIS = "s3://bucket/key, pvc://claim/path, file:///path, or a local path with `kubetune run`"

AUTO = "auto"
ALL_LINEAR = "all-linear"

DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
HTTP_URL_PATTERN = r"^https?://[^\s]+$"
# What each pattern means, for error messages (pydantic would print the expression itself).
PATTERN_MEANINGS = {
    DNS_SUBDOMAIN_PATTERN: "must be a lowercase RFC 1123 name: letters, digits, '-' and '.', "
    "starting and ending with a letter or digit",
    HTTP_URL_PATTERN: "must be an http:// or https:// URL, e.g. https://minio.example:9000",
}


class _Model(BaseModel):
    """camelCase on the wire, unknown fields rejected (a typo must not be silently ignored)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=False,
    )


def check_uri(value: str) -> str:
    """The URI, or a ValueError that says which schemes work, and why hf:// does not."""
    if _URI_RE.match(value):
        return value
    scheme = value.split("://", 1)[0] if "://" in value else ""
    if scheme == "s3":
        bucket = value[len("s3://") :].split("/", 1)[0]
        if not _S3_BUCKET_RE.match(bucket):
            raise ValueError(
                f"{value!r}: {bucket!r} is not a valid S3 bucket name "
                "(3-63 characters: lowercase letters, digits, dots and hyphens)"
            )
    if scheme in ("hf", "huggingface"):
        raise ValueError(
            f"{value!r}: hf:// is not accepted: kubetune never downloads from a model hub at run time, so "
            f"that data and weights stay in your own buckets and volumes; upload the model and use {SUPPORTED_URIS}"
        )
    raise ValueError(f"{value!r} is not a supported URI: use {SUPPORTED_URIS}")


# The CRD keeps the pattern (the apiserver checks it); pydantic's own message would print the
# regular expression, so check_uri words the error instead.
Uri = Annotated[
    str,
    Field(min_length=1, max_length=2048),
    AfterValidator(check_uri),
    WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 2048, "pattern": URI_PATTERN}),
]


class DatasetFormat(StrEnum):
    AUTO = "auto"
    CHAT = "chat"
    INSTRUCTION = "instruction"
    COMPLETION = "completion"
    TEXT = "text"


class Sharding(StrEnum):
    AUTO = "auto"
    DDP = "ddp"
    FSDP = "fsdp"


class Precision(StrEnum):
    AUTO = "auto"
    BF16 = "bf16"
    FP16 = "fp16"
    FP32 = "fp32"


def precision_problem(precision: Precision, on_gpu: bool) -> str | None:
    """The one hardware rule of the spec, shared by the operator's admission and the trainer."""
    if precision is Precision.FP16 and not on_gpu:
        return "training.precision: fp16 needs a GPU; use bf16, fp32 or auto"
    return None


class Quantization(StrEnum):
    """How the frozen base weights are stored while the LoRA adapter trains (QLoRA)."""

    NONE = "none"
    FOUR_BIT = "4bit"
    EIGHT_BIT = "8bit"


class LRScheduler(StrEnum):
    COSINE = "cosine"
    LINEAR = "linear"
    CONSTANT = "constant"


class BaseModelSpec(_Model):
    uri: Uri = Field(
        description=(
            "Where the base model lives: a directory in Hugging Face format (config.json, "
            "safetensors weights, tokenizer files). s3://bucket/prefix/, file:///path, "
            "pvc://claim/path or a local path (local mode). Hub downloads are deliberately "
            "not supported: weights come from your own buckets and volumes."
        )
    )


class DatasetSpec(_Model):
    train: Uri = Field(description="JSONL file with the training rows (s3://, file:// or a local path).")
    validation: Uri | None = Field(
        default=None,
        description="Optional JSONL file with validation rows. When absent, validationSplit of train is held out.",
    )
    format: DatasetFormat = Field(
        default=DatasetFormat.AUTO,
        description=(
            "Row format. chat: {messages:[{role,content}]} (OpenAI); instruction: {instruction,input,output}; "
            "completion: {prompt,completion}; text: {text}. auto detects it from the first row."
        ),
    )
    validation_split: float = Field(
        default=0.1,
        ge=0.0,
        le=0.5,
        description="Fraction of train rows held out for evaluation when no validation file is given.",
    )


class LoRASpec(_Model):
    r: int = Field(default=16, ge=1, le=1024, description="LoRA rank.")
    alpha: float = Field(default=32.0, gt=0, le=4096, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=lambda: [ALL_LINEAR],
        min_length=1,
        max_length=256,
        description=(
            "Module names (or suffixes) to adapt, e.g. [q_proj, v_proj]. "
            "[all-linear] adapts every linear layer except the output head."
        ),
    )

    quantization: Quantization = Field(
        default=Quantization.NONE,
        description=(
            "Store the frozen base weights quantised while the adapter trains (QLoRA, through bitsandbytes): "
            "none; 4bit: NF4 with double quantisation, computing in bf16 on GPUs (about 0.5 byte per weight); "
            "8bit: LLM.int8 (about 1 byte per weight). The adapter is published as usual and loads on the "
            "unquantised base; output.mergeAdapter merges it into the unquantised base weights."
        ),
    )
    use_dora: bool = Field(
        default=False,
        description=(
            "DoRA (weight-decomposed LoRA): also learn a magnitude per output feature. "
            "Not available with quantization 8bit on CPU."
        ),
    )
    use_rslora: bool = Field(
        default=False,
        description="rsLoRA: scale the adapter by alpha / sqrt(r) instead of alpha / r (steadier at high ranks).",
    )

    @field_validator("target_modules")
    @classmethod
    def _all_linear_alone(cls, v: list[str]) -> list[str]:
        if ALL_LINEAR in v and len(v) > 1:
            raise ValueError("'all-linear' cannot be combined with module names")
        return v


class TrainingSpec(_Model):
    epochs: StrictInt | Literal["auto"] = Field(
        default="auto",
        description=(
            "Passes over the training rows, or auto: 3, raised for tiny datasets (at least 100 examples "
            "seen) and lowered for big ones (at most 25,000), as OpenAI fine-tuning does."
        ),
    )
    max_steps: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="Stop after this many optimizer steps (overrides epochs).",
    )
    learning_rate: float = Field(default=2e-4, gt=0.0, le=1.0, description="Peak learning rate (AdamW).")
    batch_size: StrictInt | Literal["auto"] = Field(
        default="auto",
        description=(
            "Sequences per device per micro-step (packed sequences when packing is on). "
            "auto: about 16k tokens per micro-step on GPU, 4k on CPU."
        ),
    )
    gradient_accumulation_steps: int = Field(default=1, ge=1, le=1024, description="Micro-steps per optimizer step.")
    warmup_ratio: float = Field(default=0.03, ge=0.0, le=0.5, description="Fraction of steps spent warming up.")
    lr_scheduler: LRScheduler = Field(default=LRScheduler.COSINE, description="Learning-rate schedule after warmup.")
    weight_decay: float = Field(default=0.0, ge=0.0, le=1.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(default=1.0, ge=0.0, le=1000.0, description="Gradient clipping norm; 0 disables.")
    max_seq_length: int = Field(
        default=2048,
        ge=16,
        le=262_144,
        description="Tokens per sequence; longer rows are truncated and counted.",
    )
    packing: bool = Field(
        default=True,
        description=(
            "Pack several rows into one sequence. Rows never attend to each other: "
            "positions restart per row and the attention mask is block-diagonal."
        ),
    )
    completion_only_loss: bool = Field(
        default=True,
        description="Train only on completions / assistant turns. false trains on every token.",
    )
    precision: Precision = Field(default=Precision.AUTO, description="auto: bf16 on GPUs that support it, else fp32.")
    gradient_checkpointing: bool = Field(
        default=True, description="Recompute activations in backward (non-reentrant) to save memory."
    )
    sharding: Sharding = Field(
        default=Sharding.AUTO,
        description="How several processes share the model. ddp: a full copy of the base on every GPU. fsdp: "
        "the base and the adapter sharded across all GPUs of all nodes (FSDP2), for bases that do not fit one "
        "GPU. auto: fsdp when the memory estimate of a full copy does not fit the GPU, else ddp. One process: "
        "neither.",
    )
    seed: int = Field(default=42, ge=0, le=2**31 - 1, description="Seed for shuffling, split, dropout and LoRA init.")
    checkpoint_every_steps: int = Field(
        default=200, ge=1, le=10_000_000, description="Save a resumable checkpoint every N optimizer steps."
    )
    keep_checkpoints: int = Field(
        default=3,
        ge=1,
        le=100,
        description="Complete checkpoints kept under the output URI; older ones are deleted.",
    )
    log_every_steps: int = Field(default=1, ge=1, le=100_000, description="Record loss every N optimizer steps.")

    @field_validator("epochs", "batch_size")
    @classmethod
    def _positive_or_auto(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 1 <= v <= 100_000:
            raise ValueError("must be 'auto' or an integer between 1 and 100000")
        return v


class GenerationMetric(StrEnum):
    """How a generated answer is scored against the reference (the registry in the trainer's
    metrics_registry). Every one is computed; evaluation.metric picks the one reported first."""

    EXACT_MATCH = "exact_match"  # equal once whitespace is collapsed
    NORMALIZED_EXACT_MATCH = "normalized_exact_match"  # also ignoring case and punctuation
    PREFIX_MATCH = "prefix_match"  # the answer starts with the reference (generation ran on)
    NUMERIC = "numeric"  # the first number in the answer equals the reference's, within numericTolerance


class GateMetric(StrEnum):
    """What the evaluation gate judges: a loss (lower is better) or a generation metric (higher is better)."""

    EVAL_LOSS = "evalLoss"
    PERPLEXITY = "perplexity"
    EXACT_MATCH = GenerationMetric.EXACT_MATCH.value
    NORMALIZED_EXACT_MATCH = GenerationMetric.NORMALIZED_EXACT_MATCH.value
    PREFIX_MATCH = GenerationMetric.PREFIX_MATCH.value
    NUMERIC = GenerationMetric.NUMERIC.value

    @property
    def lower_is_better(self) -> bool:
        return self in (GateMetric.EVAL_LOSS, GateMetric.PERPLEXITY)

    @property
    def generation(self) -> GenerationMetric | None:
        """The generation metric it names; None for evalLoss and perplexity."""
        return None if self.lower_is_better else GenerationMetric(self.value)


class NumericTolerance(_Model):
    absolute: float = Field(
        default=0.0, ge=0.0, description="Largest accepted |answer - reference| (math.isclose's abs_tol)."
    )
    relative: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Largest accepted |answer - reference| as a share of the larger magnitude (math.isclose's "
        "rel_tol), e.g. 0.01 for 1%. An answer passes when it is within either tolerance.",
    )


class GateSpec(_Model):
    metric: GateMetric = Field(
        description="The metric judged: evalLoss or perplexity of the fine-tuned model on the validation rows, "
        "or a generation metric (exact_match, normalized_exact_match, prefix_match, numeric), which needs "
        "evaluation.exactMatch: true.",
    )
    threshold: float | None = Field(
        default=None,
        ge=0.0,
        description="The bar: for evalLoss and perplexity the largest value that passes (a maximum); for a "
        "generation metric the smallest share of correct answers that passes (a minimum, 0..1).",
    )
    must_beat_baseline: bool = Field(
        default=False,
        description="Also require the fine-tuned model to be strictly better than the base model on the metric "
        "(lower loss or perplexity, higher generation score).",
    )

    @model_validator(mode="after")
    def _some_bar(self) -> GateSpec:
        if self.threshold is None and not self.must_beat_baseline:
            raise ValueError("set threshold, mustBeatBaseline or both: a gate without a bar passes everything")
        if self.threshold is not None and self.metric.generation is not None and self.threshold > 1:
            raise ValueError(f"threshold {self.threshold} is above 1, but {self.metric.value} is a share of answers")
        return self


class EvaluationSpec(_Model):
    exact_match: bool = Field(
        default=False,
        description="Generate answers for a sample of validation rows (greedy) and score them with every "
        "generation metric; metric picks the one reported first. The name is historical: it turns generation on.",
    )
    metric: GenerationMetric | None = Field(
        default=None,
        description="The generation metric reported first, listed in the error analysis and per group: "
        "exact_match (whitespace collapsed), normalized_exact_match (also case and punctuation), prefix_match "
        "(the answer starts with the reference) or numeric (within numericTolerance). Needs exactMatch: true. "
        "Empty: exact_match.",
    )
    numeric_tolerance: NumericTolerance = Field(
        default_factory=NumericTolerance, description="How close a numeric answer must be (the numeric metric)."
    )
    max_samples: int = Field(
        default=200, ge=1, le=100_000, description="Validation rows generated for the generation metrics."
    )
    max_new_tokens: int = Field(default=32, ge=1, le=4096, description="Generation budget per sample.")
    gate: GateSpec | None = Field(
        default=None,
        description="A bar the fine-tuned adapter must meet. The adapter is published either way; the result is "
        "the EvaluationPassed condition, status.evaluation, manifest.json, eval.json and the model card.",
    )
    group_by: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="A key of the validation rows (e.g. category) to break the error analysis down by: rows, "
        "loss and generation metric per value. A key that no validation row carries fails the data check.",
    )
    worst_rows: int = Field(
        default=10, ge=0, le=1000, description="Validation rows with the highest loss listed in eval.json."
    )
    max_failures: int = Field(
        default=20, ge=0, le=1000, description="Generated answers the metric rejected listed in eval.json."
    )

    # Field validators, not one model validator, so that each error names its own field; they run
    # after exact_match, which is declared first.
    @field_validator("metric")
    @classmethod
    def _metric_needs_generation(cls, value: GenerationMetric | None, info: ValidationInfo) -> GenerationMetric | None:
        if value is not None and not info.data.get("exact_match", False):
            raise ValueError(
                f"{value.value} is only computed when evaluation.exactMatch is true (it turns generation on)"
            )
        return value

    @field_validator("gate")
    @classmethod
    def _gate_metric_needs_generation(cls, value: GateSpec | None, info: ValidationInfo) -> GateSpec | None:
        if value is not None and value.metric.generation is not None and not info.data.get("exact_match", False):
            raise ValueError(
                f"metric {value.metric.value} needs generated answers: set evaluation.exactMatch: true, "
                "or gate on evalLoss or perplexity"
            )
        return value

    @property
    def headline_metric(self) -> GenerationMetric:
        return self.metric or GenerationMetric.EXACT_MATCH


class OutputSpec(_Model):
    uri: Uri = Field(description="Where the adapter, checkpoints, metrics and manifest go (s3://, file://, path).")
    merge_adapter: bool = Field(default=False, description="Also write full merged weights under merged/ (large).")


class StorageSpec(_Model):
    endpoint: str | None = Field(
        default=None,
        max_length=2048,
        pattern=HTTP_URL_PATTERN,
        description="S3 endpoint URL for MinIO, Ceph or other S3-compatible stores. Empty means AWS.",
    )
    region: str | None = Field(default=None, max_length=64, description="S3 region.")
    credentials_secret: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description=(
            "Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for the trainer. "
            "Empty means the pod's service-account identity (IRSA, workload identity)."
        ),
    )
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        default="auto", description="S3 addressing style; MinIO usually needs path."
    )


# A Kubernetes resource quantity of bytes ("500Gi", "1.5Ti", "200G", "1e12"). Millis and other
# fractions of a byte make no sense for a size, so "m" is refused.
QUANTITY_PATTERN = r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[kMGTPE]|[eE][+-]?[0-9]+)?$"
_QUANTITY_RE = re.compile(QUANTITY_PATTERN)
_QUANTITY_FACTORS = {
    **{suffix: 1024 ** (n + 1) for n, suffix in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    **{suffix: 1000 ** (n + 1) for n, suffix in enumerate(("k", "M", "G", "T", "P", "E"))},
}


def quantity_bytes(value: str) -> int:
    """A Kubernetes quantity ("500Gi") as a whole number of bytes, or a ValueError saying what is accepted."""
    match = _QUANTITY_RE.match(value.strip())
    if not match:
        raise ValueError(
            f"{value!r} is not a Kubernetes quantity of bytes: use a number with an optional suffix "
            "Ki, Mi, Gi, Ti, Pi, Ei (powers of 1024) or k, M, G, T, P, E (powers of 1000), e.g. 500Gi"
        )
    number, suffix = match.group(1), match.group(3) or ""
    try:
        amount = (
            Decimal(number) * _QUANTITY_FACTORS[suffix] if suffix in _QUANTITY_FACTORS else Decimal(number + suffix)
        )
    except InvalidOperation as exc:  # an exponent too large for Decimal's context
        raise ValueError(f"{value!r} is too large for a size") from exc
    if amount < 1:
        raise ValueError(f"{value!r} is less than one byte; a cache needs a positive size, e.g. 500Gi")
    return int(amount)


def _check_quantity(value: str) -> str:
    quantity_bytes(value)
    return value


Quantity = Annotated[
    str,
    Field(min_length=1, max_length=64),
    AfterValidator(_check_quantity),
    WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 64, "pattern": QUANTITY_PATTERN}),
]


class CacheSpec(_Model):
    """A download cache that outlives one attempt (the base model, data and checkpoints staged from S3)."""

    claim_name: str = Field(
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description=(
            "PersistentVolumeClaim in the job's namespace, mounted at the trainer's and preflight's cache "
            "directory instead of an emptyDir, so a retry (or the next job on the same model) does not "
            "download the base model again. ReadWriteMany shares one cache between nodes (it must honour "
            "POSIX locks, as NFSv4 and CephFS do); ReadWriteOnce or a local volume gives one cache per node."
        ),
    )
    size_limit: Quantity | None = Field(
        default=None,
        description=(
            "Size cap of the cache as a Kubernetes quantity, e.g. 500Gi; keep it below the claim's capacity. "
            "Before a new entry is written, the least recently used entries that no running pod holds are "
            "evicted until it fits. A model larger than the cap is still staged (with a warning). "
            "Empty: no eviction."
        ),
    )

    @property
    def size_limit_bytes(self) -> int | None:
        return None if self.size_limit is None else quantity_bytes(self.size_limit)


class Toleration(_Model):
    key: str | None = Field(default=None, description="Taint key the toleration applies to.")
    operator: Literal["Exists", "Equal"] | None = Field(default=None, description="Exists or Equal.")
    value: str | None = Field(default=None, description="Taint value for operator Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all."
    )
    toleration_seconds: int | None = Field(default=None, description="How long a NoExecute taint is tolerated.")


class ResourcesSpec(_Model):
    gpus: int = Field(default=1, ge=0, le=64, description="GPUs per node (nvidia.com/gpu). 0 trains on CPU.")
    nodes: int = Field(default=1, ge=1, le=256, description="Nodes; more than 1 runs an Indexed Job.")
    cpu: str | None = Field(default=None, max_length=32, description="CPU request per pod, e.g. '8'.")
    memory: str | None = Field(default=None, max_length=32, description="Memory request per pod, e.g. '64Gi'.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the trainer pods need.")
    tolerations: list[Toleration] = Field(default_factory=list, description="Tolerations for GPU node taints.")


class PreflightSpec(_Model):
    enabled: bool = Field(
        default=True,
        description="Run a CPU-only Job that validates every row, counts tokens and plans the steps "
        "before any GPU is requested. Disable only for data that has already passed.",
    )
    enforce_fit: bool = Field(
        default=True,
        description="Refuse a job whose memory estimate does not fit its GPUs (reason WillNotFit), before any "
        "GPU is requested; status.preflight.fit names the cheapest change that would fit. The estimate is "
        "about ±30%: set false to try anyway.",
    )
    fail_on_warnings: bool = Field(
        default=False,
        description="Fail the job (reason DataQualityFailed, not retried) when the preflight's data-quality "
        "report has warnings (truncated or dropped rows, duplicates, validation rows also in training, empty "
        "answers, mixed formats, few trainable tokens; thresholds in docs/data.md), before any GPU is requested. "
        "False: the warnings are only reported, in status.preflight.warnings and as Warning Events.",
    )


class FineTuneJobSpec(_Model):
    base_model: BaseModelSpec = Field(description="The model to adapt.")
    dataset: DatasetSpec = Field(description="Training and validation data.")
    lora: LoRASpec = Field(default_factory=LoRASpec, description="LoRA adapter settings.")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Optimisation settings.")
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec, description="Evaluation before and after.")
    output: OutputSpec = Field(description="Where results are written.")
    storage: StorageSpec = Field(default_factory=StorageSpec, description="How to reach S3.")
    cache: CacheSpec | None = Field(
        default=None,
        description="A persistent download cache (a PVC); empty uses the operator's default cache claim, if any, "
        "else an emptyDir that each attempt fills again.",
    )
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Compute for the trainer.")
    image: str | None = Field(default=None, max_length=512, description="Trainer image; default from the operator.")
    preflight: PreflightSpec = Field(default_factory=PreflightSpec, description="Data checks before the GPU Job.")
    service_account_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="ServiceAccount of the trainer and preflight pods, for a cloud identity (IRSA, Workload "
        "Identity) instead of storage.credentialsSecret. Its API token is still not mounted.",
    )
    suspend: bool = Field(default=False, description="Create the trainer Job suspended; set false to start.")
    cancel: bool = Field(
        default=False,
        description="Set true to stop the job for good and keep the object (like Tekton's spec.status: Cancelled): "
        "a running trainer gets SIGTERM and checkpoints, the preflight and trainer Jobs are removed, and the "
        "phase becomes Cancelled with status (checkpoints, artifacts) kept until ttlSecondsAfterFinished. "
        "Cancelled is terminal: setting it back to false changes nothing. Deleting the FineTuneJob also "
        "cancels it, and removes it.",
    )
    queue_name: str | None = Field(
        default=None, max_length=253, description="Kueue LocalQueue (label kueue.x-k8s.io/queue-name)."
    )
    backoff_limit: int = Field(
        default=2,
        ge=0,
        le=100,
        description="Retries of infrastructure failures; user errors are never retried.",
    )
    active_deadline_seconds: int | None = Field(
        default=86_400, ge=60, description="Fail the job when it runs longer than this."
    )
    ttl_seconds_after_finished: int | None = Field(
        default=604_800, ge=0, description="Delete the FineTuneJob this long after it finishes."
    )

    @model_validator(mode="after")
    def _distinct_output(self) -> FineTuneJobSpec:
        if self.output.uri.rstrip("/") in {self.dataset.train.rstrip("/"), self.base_model.uri.rstrip("/")}:
            raise ValueError("output.uri must differ from baseModel.uri and dataset.train")
        return self

    @model_validator(mode="after")
    def _gate_has_rows(self) -> FineTuneJobSpec:
        if self.evaluation.gate is not None and not self.dataset.validation and self.dataset.validation_split == 0:
            raise ValueError(
                "evaluation.gate needs validation rows: set dataset.validation or a dataset.validationSplit above 0"
            )
        return self


class ObjectMeta(BaseModel):
    """The part of metadata kubetune reads; everything else is kept as is."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
    namespace: str | None = None


class FineTuneJob(BaseModel):
    """A whole manifest, as `kubectl apply -f` or `kubetune run` reads it."""

    model_config = ConfigDict(extra="allow")

    api_version: Literal["kubetune.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["FineTuneJob"]
    metadata: ObjectMeta
    spec: FineTuneJobSpec
    status: dict[str, Any] | None = None


def sharding_problem(training: TrainingSpec, lora: LoRASpec) -> str | None:
    """FSDP shards parameters; bitsandbytes' packed 4/8-bit weights are not shardable tensors here.
    Shared by the operator's admission and the trainer, like precision_problem."""
    if training.sharding is Sharding.FSDP and lora.quantization is not Quantization.NONE:
        return (
            f"training.sharding: fsdp cannot shard a quantised base (lora.quantization: {lora.quantization.value}); "
            "use sharding ddp or auto with QLoRA, or fsdp with lora.quantization: none"
        )
    return None
