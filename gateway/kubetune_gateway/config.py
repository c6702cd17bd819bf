"""The server's mounted configuration: the model catalog and the tenants (a ConfigMap key, YAML).

    catalog:                 # OpenAI `model` name -> base model URI
      llama-3.2-1b: s3://models/llama-3.2-1b/
    tenants:                 # one entry per namespace a token may map to
      team-a:
        filesUri: s3://team-a-data/kubetune/files/    # uploads: <file id>.jsonl + <file id>.json
        outputUri: s3://team-a-data/kubetune/jobs/    # a job's output: outputUri + <job id>/
        storage: {endpoint: ..., region: ..., credentialsSecret: s3-creds, addressingStyle: path}
        resources: {gpus: 1}                          # spec.resources of created jobs
        defaults: {training: {maxSeqLength: 4096}}    # any other FineTuneJob spec fields

Pure: text in, a validated model or a ValueError naming the file and the key out. A tenant's
defaults are checked at load time by building a FineTuneJob spec from them, so a bad default
fails the server's start (or is refused on reload), not a user's job creation.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from kubetune_api.spec import DNS_SUBDOMAIN_PATTERN, FineTuneJobSpec, ResourcesSpec, StorageSpec, Uri
from kubetune_api.validation_messages import describe

JSON = dict[str, Any]
# The fields a tenant's defaults may not set: the server fills them from the request and the tenant
# (dataset.format or dataset.validationSplit may be defaulted; dataset.train and validation are set per job).
SERVER_OWNED = ("baseModel", "output", "storage", "resources")


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


def _s3_prefix(value: str) -> str:
    if not value.startswith("s3://"):
        raise ValueError(f"{value!r} must be an s3:// URI (the server stores files and reads results there)")
    return value if value.endswith("/") else value + "/"


S3Prefix = Annotated[Uri, AfterValidator(_s3_prefix)]


def split_s3(uri: str) -> tuple[str, str]:
    """s3://bucket/some/key -> ("bucket", "some/key")."""
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def deep_merge(base: JSON, top: JSON) -> JSON:
    """`top` over `base`, objects merged key by key (lists and scalars replaced)."""
    merged = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


class Tenant(_Model):
    files_uri: S3Prefix = Field(description="Where uploads go: <file id>.jsonl and its <file id>.json metadata.")
    output_uri: S3Prefix = Field(description="Each job's spec.output.uri is outputUri + <job id>/.")
    storage: StorageSpec = Field(
        default_factory=StorageSpec, description="spec.storage of created jobs, and the server's own S3 endpoint."
    )
    resources: ResourcesSpec | None = Field(default=None, description="spec.resources of created jobs.")
    defaults: JSON = Field(default_factory=dict, description="Other FineTuneJob spec fields of created jobs.")

    @field_validator("defaults")
    @classmethod
    def _not_server_owned(cls, value: JSON) -> JSON:
        owned = sorted(set(value) & set(SERVER_OWNED))
        if owned:
            raise ValueError(f"{owned} are set by the server from the request and the tenant; remove them")
        return value

    def spec_base(self) -> JSON:
        """The spec fields every job of this tenant starts from, before the request's own."""
        base = copy.deepcopy(self.defaults)
        base["storage"] = self.storage.model_dump(by_alias=True, exclude_none=True, exclude_defaults=True)
        if self.resources is not None:
            base["resources"] = self.resources.model_dump(by_alias=True, exclude_unset=True)
        return base

    @model_validator(mode="after")
    def _defaults_make_a_valid_spec(self) -> Tenant:
        probe = deep_merge(
            self.spec_base(),
            {
                "baseModel": {"uri": "s3://probe-bucket/model/"},
                "dataset": {"train": "s3://probe-bucket/train.jsonl"},
                "output": {"uri": self.output_uri + "probe/"},
            },
        )
        try:
            FineTuneJobSpec.model_validate(probe)
        except ValidationError as exc:
            problems = describe(exc, FineTuneJobSpec, "defaults")
            raise ValueError(f"do not make a valid FineTuneJob spec: {problems}") from exc
        return self


class GatewayConfig(_Model):
    catalog: dict[Annotated[str, Field(min_length=1, max_length=256)], Uri] = Field(
        description="OpenAI `model` name -> base model URI."
    )
    tenants: dict[Annotated[str, Field(max_length=63, pattern=DNS_SUBDOMAIN_PATTERN)], Tenant] = Field(
        description="Namespace -> where its files and outputs go."
    )


def parse_config(text: str, source: str) -> GatewayConfig:
    """The config file's YAML, validated; a ValueError names the file and every bad key."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{source}: not YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: expected a mapping with keys catalog and tenants, got {type(raw).__name__}")
    try:
        return GatewayConfig.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(f"{source}: {describe(exc, GatewayConfig)}") from exc
