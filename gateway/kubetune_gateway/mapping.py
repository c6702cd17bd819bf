"""OpenAI fine-tuning objects <-> FineTuneJobs, as pure functions (no I/O, no clock).

- a `POST /v1/fine_tuning/jobs` body -> a FineTuneJob manifest (`build_finetunejob`);
- a FineTuneJob -> `fine_tuning.job` (`job_object`);
- its Kubernetes Events (and two synthetic ones) -> `fine_tuning.job.event` (`job_events`);
- `status.checkpoints` -> `fine_tuning.job.checkpoint` (`checkpoint_objects`);
- an uploaded file's metadata -> `file` (`file_object`);
- any list -> OpenAI's cursor page (`page`).

The mappings the OpenAI API leaves open are decided here and documented in docs/openai-api.md.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, ValidationError, field_validator

from kubetune_api.spec import API_GROUP, API_VERSION, KIND, FineTuneJob, ResourcesSpec, TrainingSpec
from kubetune_api.status import TERMINAL_PHASES, FineTuneJobStatus, Phase, parse_rfc3339
from kubetune_api.validation_messages import describe, describe_errors
from kubetune_gateway.config import JSON, Tenant, deep_merge
from kubetune_gateway.errors import SERVER_ERROR, ApiError, invalid, param_path
from kubetune_gateway.ids import is_file_id

# Which FineTuneJobs this server made, and what the request said that the spec does not hold.
LABEL_API = "kubetune.io/openai-api"
ANNOTATION_PREFIX = "kubetune.io/openai-"
ANN_MODEL = ANNOTATION_PREFIX + "model"
ANN_SUFFIX = ANNOTATION_PREFIX + "suffix"
ANN_TRAINING_FILE = ANNOTATION_PREFIX + "training-file"
ANN_VALIDATION_FILE = ANNOTATION_PREFIX + "validation-file"
ANN_HYPERPARAMETERS = ANNOTATION_PREFIX + "hyperparameters"
ANN_METADATA = ANNOTATION_PREFIX + "metadata"

AUTO: Final = "auto"
BASE_LEARNING_RATE = TrainingSpec.model_fields["learning_rate"].default
MAX_BATCH_SIZE = 256  # OpenAI's upper bound
SEED_MAX = 2**31 - 1
_SUFFIX_RE = re.compile(r"^[A-Za-z0-9._-]*$")

OpenAIStatus = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
STATUS_OF_PHASE: dict[Phase, OpenAIStatus] = {
    Phase.PENDING: "validating_files",
    Phase.VALIDATING: "validating_files",
    Phase.QUEUED: "queued",
    Phase.SUSPENDED: "queued",
    Phase.INITIALIZING: "running",
    Phase.RUNNING: "running",
    Phase.EXPORTING: "running",
    Phase.SUCCEEDED: "succeeded",
    Phase.FAILED: "failed",
    Phase.CANCELLED: "cancelled",
}
# The request parameter a failure reason is about, for `error.param`.
PARAM_OF_REASON = {"DatasetInvalid": "training_file"}


# -- the create request ----------------------------------------------------------------------------


class _Request(BaseModel):
    """Unknown parameters are refused by name, as OpenAI does (`Unrecognized request argument`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Hyperparameters(_Request):
    n_epochs: Literal["auto"] | StrictInt = AUTO
    batch_size: Literal["auto"] | StrictInt = AUTO
    learning_rate_multiplier: Literal["auto"] | StrictFloat | StrictInt = AUTO

    @field_validator("n_epochs")
    @classmethod
    def _epochs(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 100_000:
            raise ValueError("must be 'auto' or an integer between 1 and 100000")
        return value

    @field_validator("batch_size")
    @classmethod
    def _batch(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= MAX_BATCH_SIZE:
            raise ValueError(f"must be 'auto' or an integer between 1 and {MAX_BATCH_SIZE}")
        return value

    @field_validator("learning_rate_multiplier")
    @classmethod
    def _multiplier(cls, value: float | str) -> float | str:
        if not isinstance(value, str) and not 0 < value <= 1000:
            raise ValueError("must be 'auto' or a number greater than 0 (at most 1000)")
        return value


class SupervisedMethod(_Request):
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class Method(_Request):
    type: str
    supervised: SupervisedMethod | None = None
    dpo: Any = None
    reinforcement: Any = None

    @field_validator("type")
    @classmethod
    def _supervised_only(cls, value: str) -> str:
        if value != "supervised":
            raise ValueError(
                f"{value!r} is not supported: kubetune trains LoRA adapters by supervised fine-tuning; use 'supervised'"
            )
        return value


class CreateJobRequest(_Request):
    model: str = Field(min_length=1, max_length=256)
    training_file: str = Field(min_length=1)
    validation_file: str | None = None
    suffix: str | None = Field(default=None, max_length=64)
    seed: StrictInt | None = Field(default=None, ge=0, le=SEED_MAX)
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    integrations: list[Any] | None = None
    metadata: dict[str, str] | None = Field(default=None, max_length=16)

    @field_validator("training_file", "validation_file")
    @classmethod
    def _file_id(cls, value: str | None) -> str | None:
        if value is not None and not is_file_id(value):
            raise ValueError(f"{value!r} is not a file id (file-...) returned by POST /v1/files")
        return value

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, value: str | None) -> str | None:
        if value is not None and not _SUFFIX_RE.match(value):
            raise ValueError("use letters, digits, '.', '_' and '-' only (it becomes part of the model name)")
        return value

    @field_validator("integrations")
    @classmethod
    def _no_integrations(cls, value: list[Any] | None) -> list[Any] | None:
        if value:
            raise ValueError(
                "integrations are not supported: metrics go to the job's status, Events, Prometheus and "
                "metrics.json in the output bucket, never to a third-party service"
            )
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for key, item in (value or {}).items():
            if len(key) > 64 or len(item) > 512:
                raise ValueError(f"key {key!r}: keys are at most 64 characters and values at most 512")
        return value

    def hyperparameters_and_param(self) -> tuple[Hyperparameters, str]:
        """The hyperparameters wherever they were given, and the parameter path errors name."""
        in_method = self.method.supervised if self.method is not None else None
        if in_method is not None and self.hyperparameters is not None:
            raise invalid(
                "Pass hyperparameters either in method.supervised.hyperparameters or at the top level "
                "(deprecated), not both.",
                "hyperparameters",
            )
        if in_method is not None:
            return in_method.hyperparameters, "method.supervised.hyperparameters"
        return self.hyperparameters or Hyperparameters(), "hyperparameters"


def parse_create_request(body: Any) -> CreateJobRequest:
    """The request body, or a 400 naming the first bad parameter."""
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.", None)
    try:
        request = CreateJobRequest.model_validate(body)
    except ValidationError as exc:
        raise request_error(exc, body, CreateJobRequest) from exc
    request.hyperparameters_and_param()  # both places given: refused now, before anything is stored
    return request


def request_error(exc: ValidationError, given: Any, model: type[BaseModel]) -> ApiError:
    """A request body's first validation error as a 400 naming the parameter, in OpenAI's words."""
    first = exc.errors(include_url=False)[0]
    param = param_path(tuple(first["loc"]), given)
    if first["type"] == "extra_forbidden":
        return invalid(f"Unrecognized request argument supplied: {param}", param, "unknown_parameter")
    if first["type"] == "missing":
        return invalid(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")
    # describe_errors collapses the branches of `'auto' | int` into one sentence; its first line is this error's.
    line = describe_errors(exc, model, by_alias=False)[0]
    detail = line.split(": ", 1)[1] if ": " in line else line
    return invalid(f"Invalid value for '{param}': {detail}", param, "invalid_value")


# -- request -> FineTuneJob ------------------------------------------------------------------------

# Spec fields a request sets, to name the request's parameter when the spec refuses a value.
_PARAM_OF_SPEC_FIELD = {
    ("spec", "training", "epochs"): "n_epochs",
    ("spec", "training", "batchSize"): "batch_size",
    ("spec", "training", "learningRate"): "learning_rate_multiplier",
}


def world_size(resources: ResourcesSpec) -> int:
    """Training processes of a job: one per GPU (or one on CPU) on each node."""
    return max(resources.gpus, 1) * resources.nodes


def build_finetunejob(
    request: CreateJobRequest,
    *,
    job_id: str,
    namespace: str,
    tenant: Tenant,
    model_uri: str,
    seed: int,
) -> JSON:
    """The FineTuneJob a create request asks for, in the tenant's namespace and buckets.

    - `n_epochs` -> training.epochs; `auto` keeps kubetune's auto (3, scaled like OpenAI's).
    - `batch_size` (examples per optimizer step, OpenAI's meaning) -> packing off, one example per
      sequence, batch_size / world size sequences per process, no accumulation; `auto` keeps
      kubetune's packed, token-budgeted batch.
    - `learning_rate_multiplier` scales the base learning rate: the tenant's
      defaults.training.learningRate, else the spec's default (2e-4).
    - `seed` -> training.seed; the caller passes a random one when the request has none.
    """
    hyper, hyper_param = request.hyperparameters_and_param()
    spec = tenant.spec_base()
    training: JSON = spec.setdefault("training", {})
    training["seed"] = seed
    if hyper.n_epochs != AUTO:
        training["epochs"] = hyper.n_epochs
    if hyper.batch_size != AUTO:
        assert isinstance(hyper.batch_size, int)
        processes = world_size(ResourcesSpec.model_validate(spec.get("resources", {})))
        if hyper.batch_size % processes:
            raise invalid(
                f"Invalid value for '{hyper_param}.batch_size': {hyper.batch_size} is not a multiple of {processes}, "
                "the training processes of this namespace's jobs (resources.gpus x resources.nodes)",
                f"{hyper_param}.batch_size",
                "invalid_value",
            )
        training.update(batchSize=hyper.batch_size // processes, packing=False, gradientAccumulationSteps=1)
    if hyper.learning_rate_multiplier != AUTO:
        assert not isinstance(hyper.learning_rate_multiplier, str)
        base = float(training.get("learningRate", BASE_LEARNING_RATE))
        training["learningRate"] = base * float(hyper.learning_rate_multiplier)
    dataset = {"train": f"{tenant.files_uri}{request.training_file}.jsonl"}
    if request.validation_file:
        dataset["validation"] = f"{tenant.files_uri}{request.validation_file}.jsonl"
    spec = deep_merge(spec, {"dataset": dataset})
    spec["baseModel"] = {"uri": model_uri}
    spec["output"] = {"uri": f"{tenant.output_uri}{job_id}/"}

    annotations = {
        ANN_MODEL: request.model,
        ANN_TRAINING_FILE: request.training_file,
        ANN_HYPERPARAMETERS: json.dumps(hyper.model_dump(), sort_keys=True),
    }
    if request.suffix:
        annotations[ANN_SUFFIX] = request.suffix
    if request.validation_file:
        annotations[ANN_VALIDATION_FILE] = request.validation_file
    if request.metadata:
        annotations[ANN_METADATA] = json.dumps(request.metadata, sort_keys=True)
    manifest: JSON = {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "metadata": {"name": job_id, "namespace": namespace, "labels": {LABEL_API: "v1"}, "annotations": annotations},
        "spec": spec,
    }
    try:
        FineTuneJob.model_validate(manifest)
    except ValidationError as exc:
        first = tuple(exc.errors(include_url=False)[0]["loc"])
        name = _PARAM_OF_SPEC_FIELD.get(first[:3])  # type: ignore[arg-type]
        if name is not None:
            param = f"{hyper_param}.{name}"
            raise invalid(f"Invalid value for '{param}': {describe(exc, FineTuneJob)}", param, "invalid_value") from exc
        raise ApiError(
            500,
            f"The server's configuration for namespace {namespace} makes an invalid FineTuneJob: "
            f"{describe(exc, FineTuneJob)}",
            type_=SERVER_ERROR,
        ) from exc
    return manifest


# -- FineTuneJob -> fine_tuning.job ----------------------------------------------------------------


def _unix(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp())


def _unix_text(text: str | None) -> int | None:
    return _unix(parse_rfc3339(text))


def status_of(ftj: JSON) -> FineTuneJobStatus:
    return FineTuneJobStatus.model_validate(ftj.get("status") or {})


def openai_status(phase: Phase | None) -> OpenAIStatus:
    """No phase yet: the operator has not seen the job; it will validate the files first."""
    return "validating_files" if phase is None else STATUS_OF_PHASE[phase]


def fine_tuned_model_name(model: str, namespace: str, suffix: str, job_id: str) -> str:
    """OpenAI's `ft:<base>:<org>:<suffix>:<id>`, with the namespace as the organisation."""
    return f"ft:{model}:{namespace}:{suffix}:{job_id}"


def finished_at(status: FineTuneJobStatus) -> int | None:
    """A terminal job's end: completionTime, else the latest condition change (a cancelled job)."""
    if status.phase not in TERMINAL_PHASES:
        return None
    if status.completion_time is not None:
        return _unix(status.completion_time)
    times = [c.last_transition_time for c in status.conditions]
    return _unix(max(times)) if times else None


def estimated_finish(status: FineTuneJobStatus) -> int | None:
    """When a running job should end: the trainer's last report plus its ETA then."""
    progress = status.progress
    if openai_status(status.phase) != "running" or progress is None:
        return None
    if progress.eta_seconds is None or progress.last_update_time is None:
        return None
    return int(progress.last_update_time.timestamp()) + progress.eta_seconds


def _annotations(ftj: JSON) -> dict[str, str]:
    return dict(ftj.get("metadata", {}).get("annotations") or {})


def _resolved_hyperparameters(ftj: JSON, status: FineTuneJobStatus) -> JSON:
    """What was asked for, with `auto` epochs resolved once the preflight planned them."""
    asked = json.loads(_annotations(ftj).get(ANN_HYPERPARAMETERS) or "{}")
    hyper = {"n_epochs": AUTO, "batch_size": AUTO, "learning_rate_multiplier": AUTO, **asked}
    if hyper["n_epochs"] == AUTO and status.preflight is not None and status.preflight.epochs is not None:
        hyper["n_epochs"] = status.preflight.epochs
    return hyper


def job_object(ftj: JSON) -> JSON:
    """A FineTuneJob as OpenAI's `fine_tuning.job`, with a `kubetune` object for what OpenAI has no field for."""
    metadata = ftj["metadata"]
    job_id, namespace = metadata["name"], metadata.get("namespace", "")
    annotations = _annotations(ftj)
    status = status_of(ftj)
    spec = ftj.get("spec", {})
    model = annotations.get(ANN_MODEL, spec.get("baseModel", {}).get("uri", ""))
    state = openai_status(status.phase)
    error = None
    if state == "failed":
        reason = status.error.reason if status.error is not None else "Failed"
        message = status.error.message if status.error is not None else (status.message or "the job failed")
        error = {"code": reason, "message": message, "param": PARAM_OF_REASON.get(reason)}
    artifacts = status.artifacts
    hyper = _resolved_hyperparameters(ftj, status)
    user_metadata = json.loads(annotations[ANN_METADATA]) if ANN_METADATA in annotations else None
    return {
        "id": job_id,
        "object": "fine_tuning.job",
        "created_at": _unix_text(metadata.get("creationTimestamp")) or 0,
        "error": error,
        "fine_tuned_model": (
            fine_tuned_model_name(model, namespace, annotations.get(ANN_SUFFIX, ""), job_id)
            if state == "succeeded"
            else None
        ),
        "finished_at": finished_at(status),
        "hyperparameters": hyper,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyper}},
        "model": model,
        "organization_id": namespace,
        "result_files": [],
        "seed": spec.get("training", {}).get("seed", 0),
        "status": state,
        "trained_tokens": status.trained_tokens if state == "succeeded" else None,
        "training_file": annotations.get(ANN_TRAINING_FILE, spec.get("dataset", {}).get("train", "")),
        "validation_file": annotations.get(ANN_VALIDATION_FILE),
        "estimated_finish": estimated_finish(status),
        "integrations": [],
        "metadata": user_metadata,
        "user_provided_suffix": annotations.get(ANN_SUFFIX),
        "kubetune": {
            "namespace": namespace,
            "phase": status.phase.value if status.phase is not None else None,
            "message": status.message,
            "progress": status.progress.percent if status.progress is not None else None,
            "adapter_uri": artifacts.adapter_uri if artifacts is not None else None,
            "manifest_uri": artifacts.manifest_uri if artifacts is not None else None,
            "output_uri": spec.get("output", {}).get("uri"),
            "cancel_requested": bool(spec.get("cancel", False)),
        },
    }


def is_cancellable(ftj: JSON) -> bool:
    return status_of(ftj).phase not in TERMINAL_PHASES


def newest_first(ftjs: list[JSON]) -> list[JSON]:
    """By creation time, then name (ties within one second)."""
    return sorted(
        ftjs,
        key=lambda o: (o["metadata"].get("creationTimestamp") or "", o["metadata"]["name"]),
        reverse=True,
    )


# -- Events -> fine_tuning.job.event ---------------------------------------------------------------


def _event_moment(event: JSON) -> datetime | None:
    """When an Event last happened, at the precision it has (eventTime carries microseconds)."""
    for key in ("eventTime", "lastTimestamp", "firstTimestamp"):
        moment = parse_rfc3339(event.get(key))
        if moment is not None:
            return moment
    return parse_rfc3339(event.get("metadata", {}).get("creationTimestamp"))


def about_job(event: JSON, ftj: JSON) -> bool:
    """An Event about this FineTuneJob (by uid when both have one: a re-created name is another job)."""
    involved = event.get("involvedObject") or {}
    if involved.get("kind") not in (None, KIND) or involved.get("name") != ftj["metadata"]["name"]:
        return False
    uid, job_uid = involved.get("uid"), ftj["metadata"].get("uid")
    return not (uid and job_uid and uid != job_uid)


def event_object(event: JSON) -> JSON:
    """A Kubernetes Event as `fine_tuning.job.event`: Warning -> warn, Normal -> info."""
    meta = event.get("metadata", {})
    reason, message = event.get("reason") or "", event.get("message") or ""
    return {
        "id": f"ftevent-{meta.get('uid') or meta.get('name')}",
        "object": "fine_tuning.job.event",
        "created_at": _unix(_event_moment(event)) or 0,
        "level": "warn" if event.get("type") == "Warning" else "info",
        "message": f"{reason}: {message}" if reason and message else reason or message,
        "type": "message",
        "data": {"reason": reason, "count": event.get("count") or 1},
    }


def synthetic_events(ftj: JSON) -> list[JSON]:
    """What OpenAI always reports and Kubernetes has no Event for: the creation, the latest metrics."""
    job_id = ftj["metadata"]["name"]
    created_at = _unix_text(ftj["metadata"].get("creationTimestamp")) or 0
    events: list[JSON] = [
        {
            "id": f"ftevent-{job_id}-created",
            "object": "fine_tuning.job.event",
            "created_at": created_at,
            "level": "info",
            "message": f"Created fine-tuning job: {job_id}",
            "type": "message",
            "data": {},
        }
    ]
    status = status_of(ftj)
    progress, metrics = status.progress, status.metrics
    if progress is not None and progress.step is not None:
        data: JSON = {"step": progress.step, "total_steps": progress.total_steps}
        if metrics is not None:
            data.update(train_loss=metrics.train_loss, valid_loss=metrics.eval_loss)
        events.append(
            {
                "id": f"ftevent-{job_id}-metrics-{progress.step}",
                "object": "fine_tuning.job.event",
                "created_at": _unix(progress.last_update_time) or created_at,
                "level": "info",
                "message": f"Step {progress.step}/{progress.total_steps}: training loss={data.get('train_loss')}",
                "type": "metrics",
                "data": data,
            }
        )
    return events


def job_events(ftj: JSON, events: list[JSON]) -> list[JSON]:
    """The job's events, newest first, as OpenAI lists them.

    Ordered by time at full precision (many Events share a second); within a tie the creation
    comes first and the API's own order is kept.
    """
    created, *metrics = synthetic_events(ftj)
    keyed: list[tuple[float, int, int, JSON]] = [(float(created["created_at"]), 0, 0, created)]
    for index, event in enumerate(e for e in events if about_job(e, ftj)):
        moment = _event_moment(event)
        keyed.append((moment.timestamp() if moment else 0.0, 1, index, event_object(event)))
    keyed += [(float(m["created_at"]), 2, 0, m) for m in metrics]
    return [obj for *_, obj in sorted(keyed, key=lambda k: k[:3], reverse=True)]


# -- status.checkpoints -> fine_tuning.job.checkpoint ----------------------------------------------


def checkpoint_objects(ftj: JSON) -> list[JSON]:
    """The job's complete checkpoints, newest first. Each is a resumable training state with the adapter."""
    metadata = ftj["metadata"]
    job_id, namespace = metadata["name"], metadata.get("namespace", "")
    annotations = _annotations(ftj)
    model_name = fine_tuned_model_name(
        annotations.get(ANN_MODEL, ""), namespace, annotations.get(ANN_SUFFIX, ""), job_id
    )
    status = status_of(ftj)
    return [
        {
            "id": f"ftckpt-{job_id}-step-{c.step}",
            "object": "fine_tuning.job.checkpoint",
            "created_at": _unix(c.time) or 0,
            "fine_tuned_model_checkpoint": f"{model_name}:ckpt-step-{c.step}",
            "fine_tuning_job_id": job_id,
            "step_number": c.step,
            "metrics": {"step": float(c.step)},
            "kubetune": {"uri": c.uri},
        }
        for c in sorted(status.checkpoints, key=lambda c: c.step, reverse=True)
    ]


# -- files -----------------------------------------------------------------------------------------


class FileRecord(BaseModel):
    """What the server stores beside an upload (`<file id>.json`), so that no database is needed."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    rows: int | None = None
    format: str | None = None


def file_object(record: FileRecord) -> JSON:
    return {
        "id": record.id,
        "object": "file",
        "bytes": record.bytes,
        "created_at": record.created_at,
        "filename": record.filename,
        "purpose": record.purpose,
        "status": "processed",
        "status_details": None,
        "expires_at": None,
    }


def upload_filename(raw: str | None) -> str:
    """The client's file name without any directory part (it is shown back, never used as a path)."""
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    return name[:255] or "upload.jsonl"


# -- lists -----------------------------------------------------------------------------------------


def parse_limit(raw: str | None, default: int, maximum: int) -> int:
    if raw is None:
        return default
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= maximum:
        raise invalid(f"Invalid value for 'limit': {raw!r}; expected an integer between 1 and {maximum}", "limit")
    return limit


def page(items: list[JSON], after: str | None, limit: int) -> JSON:
    """OpenAI's cursor page over `items` (already in list order): the `limit` items after the one
    whose id is `after`."""
    start = 0
    if after is not None:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise invalid(f"Invalid value for 'after': {after!r} is not in this list", "after")
        start = ids.index(after) + 1
    data = items[start : start + limit]
    return {
        "object": "list",
        "data": data,
        "has_more": start + limit < len(items),
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }
