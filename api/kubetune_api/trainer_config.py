"""The trainer's input contract, and the one pure function that maps a FineTuneJob to it.

The operator renders a TrainerConfig into a ConfigMap; `kubetune run` builds the same
object in-process. Both call `trainer_config_from_job`, so a job behaves the same on a
laptop and on a cluster. No torch here.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kubetune_api.spec import (
    API_GROUP,
    API_VERSION,
    KIND,
    DatasetSpec,
    EvaluationSpec,
    FineTuneJob,
    LoRASpec,
    OutputSpec,
    PreflightSpec,
    ResourcesSpec,
    StorageSpec,
    TrainingSpec,
)

CONFIG_VERSION = 1


class RuntimeOptions(BaseModel):
    """Where the trainer runs: things that differ between a pod and a laptop, never between jobs."""

    model_config = ConfigDict(extra="forbid")

    cache_dir: str = Field(default="~/.cache/kubetune", description="Download cache (model and data).")
    cache_size_limit_bytes: int | None = Field(
        default=None,
        ge=1,
        description="Cap of the download cache: least recently used entries are evicted to stay under it "
        "(spec.cache.sizeLimit on a cluster). None: no eviction.",
    )
    work_dir: str | None = Field(default=None, description="Scratch space; a temp dir when empty.")
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="Serve /metrics and /progress here (0 = any free port)."
    )
    metrics_host: str = Field(default="0.0.0.0", description="Address the metrics server binds.")
    metrics_linger_seconds: float = Field(
        default=0.0,
        ge=0,
        le=600,
        description="Keep serving /metrics this long after the run, so a scraper sees the final eval loss.",
    )
    termination_message_path: str | None = Field(
        default=None, description="Write the final summary JSON (<= 4 KB) here, e.g. /dev/termination-log."
    )
    progress_bar: bool = Field(default=False, description="Show a terminal progress bar.")
    device: str = Field(default="auto", description="auto, cpu or cuda.")
    attempt: int = Field(default=1, ge=1, description="Attempt number (the operator counts retries).")


class TrainerConfig(BaseModel):
    """Everything the trainer needs, resolved. Serialised as trainer.json."""

    model_config = ConfigDict(extra="forbid")

    version: int = CONFIG_VERSION
    job_name: str
    namespace: str | None = None
    base_model_uri: str
    dataset: DatasetSpec
    lora: LoRASpec
    training: TrainingSpec
    evaluation: EvaluationSpec
    output: OutputSpec
    storage: StorageSpec
    # The hardware the job asks for: the preflight plans memory, fit and time for it.
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    # failOnWarnings: `kubetune run` and a trainer started without the operator's preflight gate too.
    preflight: PreflightSpec = Field(default_factory=PreflightSpec)
    runtime: RuntimeOptions = Field(default_factory=RuntimeOptions)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, by_alias=False)


def _local(uri: str, base_dir: Path | None) -> str:
    """Resolve relative paths (`data/x.jsonl`, `file://./model/`) against the manifest's folder.

    Only in local mode (`base_dir` given); on a cluster there is no meaningful "here".
    """
    if base_dir is None:
        return uri
    scheme = "file://" if uri.startswith("file://") else ""
    path = uri[len(scheme) :]
    if (scheme == "" and "://" in uri) or Path(path).is_absolute() or path.startswith("~"):
        return uri
    resolved = str((base_dir / path).resolve()) + ("/" if path.endswith("/") else "")
    return scheme + resolved


def trainer_config_from_job(
    job: FineTuneJob, runtime: RuntimeOptions | None = None, base_dir: Path | None = None
) -> TrainerConfig:
    """Map a validated FineTuneJob to the trainer's config. Pure: same input, same output.

    `base_dir` resolves relative local paths (a manifest's own folder, for `kubetune run`);
    the operator passes None, and plain paths are then rejected by its semantic checks.
    """
    spec = job.spec
    dataset = spec.dataset.model_copy(
        update={
            "train": _local(spec.dataset.train, base_dir),
            "validation": None if spec.dataset.validation is None else _local(spec.dataset.validation, base_dir),
        }
    )
    output = spec.output.model_copy(update={"uri": _local(spec.output.uri, base_dir)})
    return TrainerConfig(
        job_name=job.metadata.name,
        namespace=job.metadata.namespace,
        base_model_uri=_local(spec.base_model.uri, base_dir),
        dataset=dataset,
        lora=spec.lora,
        training=spec.training,
        evaluation=spec.evaluation,
        output=output,
        storage=spec.storage,
        resources=spec.resources,
        preflight=spec.preflight,
        runtime=runtime or RuntimeOptions(),
    )


def load_manifest(data: dict[str, Any]) -> FineTuneJob:
    """Validate a manifest by its wire (camelCase) names only, as the apiserver would."""
    return FineTuneJob.model_validate(data, by_alias=True, by_name=False)


class ManifestError(ValueError):
    """A YAML file that does not hold exactly one FineTuneJob; the message says what it holds."""


def select_finetunejob(documents: list[Any]) -> dict[str, Any]:
    """The one FineTuneJob among a file's YAML documents.

    A wrong kind or apiVersion is named as such (with the nearest real kind), not reported as
    "no FineTuneJob found", because that is the mistake a person makes.
    """
    expected_version = f"{API_GROUP}/{API_VERSION}"
    objects = [d for d in documents if isinstance(d, dict)]
    jobs = [d for d in objects if d.get("kind") == KIND]
    if len(jobs) > 1:
        raise ManifestError(f"expected exactly one FineTuneJob document, found {len(jobs)}")
    if jobs:
        version = jobs[0].get("apiVersion")
        if version != expected_version:
            raise ManifestError(f"apiVersion is {version!r}; a FineTuneJob's apiVersion is {expected_version}")
        return jobs[0]
    if not objects:
        raise ManifestError(f"the file holds no YAML object; expected a FineTuneJob ({expected_version})")
    kinds = [str(d.get("kind")) for d in objects]
    near = difflib.get_close_matches(KIND.lower(), [k.lower() for k in kinds], n=1, cutoff=0.75)
    if near:
        kind = kinds[[k.lower() for k in kinds].index(near[0])]
        raise ManifestError(f"kind is {kind!r}; did you mean {KIND}? (apiVersion {expected_version})")
    listed = ", ".join(repr(k) for k in kinds)
    raise ManifestError(f"expected a FineTuneJob ({expected_version}), found kind {listed}")
