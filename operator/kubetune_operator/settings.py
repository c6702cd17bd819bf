"""Operator settings: KUBETUNE_* environment variables (the Helm chart sets them), CLI flags on top.

pydantic-settings reads the environment: `KUBETUNE_POLL_INTERVAL_SECONDS=5` sets
`poll_interval_seconds`, and a bad value fails at start-up naming the variable's field.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from kubetune_api.gpus import gpu_type_named
from kubetune_api.spec import DNS_SUBDOMAIN_PATTERN, CacheSpec, Quantity

ENV_PREFIX = "KUBETUNE_"


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    namespace: str | None = Field(default=None, description="Watch one namespace; None watches all.")
    trainer_image: str = Field(default="ghcr.io/kubetune/trainer:0.1.0", description="Default trainer image.")
    preflight_image: str | None = Field(
        default=None, description="Image for the CPU preflight Job; defaults to the trainer image."
    )
    image_pull_policy: str = Field(default="IfNotPresent")
    metrics_port: int = Field(default=9090, ge=1, le=65535, description="Trainer /metrics and /progress port.")
    rendezvous_port: int = Field(
        default=29500, ge=1, le=65535, description="Multi-node trainers' rendezvous port on rank 0 (torchrun's)."
    )
    trainer_metrics_linger_seconds: float = Field(
        default=30.0, ge=0, le=600, description="Trainers keep serving /metrics this long after the run."
    )
    poll_interval_seconds: float = Field(default=15.0, gt=0, description="How often running jobs are polled.")
    preflight_cpu: str = Field(default="1")
    preflight_memory: str = Field(default="2Gi")
    cache_size_limit: str = Field(default="200Gi", description="emptyDir limit for the trainer's model cache.")
    cache_claim_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="Default cache PVC for jobs without spec.cache (it must exist in each job's namespace).",
    )
    cache_claim_size_limit: Quantity | None = Field(
        default=None, description="Size cap of the default cache PVC (a quantity, e.g. 500Gi); None: no eviction."
    )
    max_checkpoints_in_status: int = Field(default=10, ge=1, le=100)
    gpu_memory_gib: float = Field(
        default=80.0,
        gt=0,
        description="GPU memory the preflight's memory estimate is compared with when the job's GPU type is unknown.",
    )
    gpu_prices: dict[str, float] = Field(
        default_factory=dict,
        description="Price per GPU-hour by GPU type (H100-80GB, A100-80GB, ...; JSON in KUBETUNE_GPU_PRICES), "
        "for status.preflight.fit.estimatedCost. A type without a price gets no cost, and a Warning.",
    )
    currency: str = Field(default="USD", max_length=8, description="Currency of gpu_prices.")
    progress_timeout_seconds: float = Field(default=3.0, gt=0, description="Timeout of one /progress request.")
    health_port: int = Field(default=8080, ge=1, le=65535, description="Operator /healthz, /readyz and /metrics.")
    api_workers: int = Field(default=16, ge=1, le=256, description="Threads for Kubernetes API calls.")

    def gpu_price(self, gpu_type: str) -> float | None:
        """The price per GPU-hour of a GPU type; keys may be type names or node label values."""
        for key, price in self.gpu_prices.items():
            named = gpu_type_named(key)
            if key == gpu_type or (named is not None and named.name == gpu_type):
                return price
        return None

    @property
    def preflight_image_or_default(self) -> str:
        return self.preflight_image or self.trainer_image

    @property
    def default_cache(self) -> CacheSpec | None:
        """The chart's cache claim, for jobs that name none."""
        if not self.cache_claim_name:
            return None
        return CacheSpec(claim_name=self.cache_claim_name, size_limit=self.cache_claim_size_limit)
