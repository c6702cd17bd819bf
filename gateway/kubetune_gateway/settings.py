"""Server settings: KUBETUNE_API_* environment variables (the Helm chart sets them).

`KUBETUNE_API_PORT=8000` sets `port`; a bad value fails at start-up naming the variable's field.
The tenants, the model catalog and the tokens are not settings: they live in mounted files
(a ConfigMap and a Secret) that are re-read when they change, so they rotate without a restart.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "KUBETUNE_API_"
MIB = 1024 * 1024


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    host: str = Field(default="0.0.0.0", description="Address to listen on.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port of the API and /healthz.")
    tokens_file: Path = Field(
        default=Path("/etc/kubetune-api/tokens/tokens.json"),
        description='A mounted Secret key: JSON {"<bearer token>": "<namespace>"}; re-read when it changes.',
    )
    config_file: Path = Field(
        default=Path("/etc/kubetune-api/config/config.yaml"),
        description="A mounted ConfigMap key: the model catalog and the tenants; re-read when it changes.",
    )
    max_upload_bytes: int = Field(
        default=512 * MIB, ge=1, description="Largest file POST /v1/files accepts (OpenAI's limit: 512 MB)."
    )
    workers: int = Field(default=8, ge=1, le=256, description="Threads for Kubernetes and S3 calls.")
