"""Failure taxonomy: every trainer failure maps to a reason and an exit code.

The operator reads the exit code (and the termination message) to decide whether a
retry can help. User errors (bad data, bad config, a URI that does not exist or is
forbidden) are never retried; infrastructure errors (storage hiccups, OOM, preemption)
are retried as a new attempt that resumes from the latest checkpoint.

    exit 0    success
    exit 10-19  user error       -> not retried
    exit 20-29  infrastructure   -> retried up to backoffLimit
    exit 143    SIGTERM: checkpoint saved, then stopped (preempted / evicted)
"""

from __future__ import annotations

from typing import ClassVar


class KubetuneError(Exception):
    """Base class: `reason` is a CamelCase enum shared with the operator's status.error.reason."""

    reason: ClassVar[str] = "Unknown"
    exit_code: ClassVar[int] = 1
    user_error: ClassVar[bool] = False

    @property
    def kind(self) -> str:
        return "user error" if self.user_error else "infrastructure error"

    def describe(self) -> str:
        return f"{self.reason} ({self.kind}): {self}"


class UserError(KubetuneError):
    user_error = True
    exit_code = 10


class InvalidSpec(UserError):
    reason = "InvalidSpec"
    exit_code = 11


class DatasetInvalid(UserError):
    reason = "DatasetInvalid"
    exit_code = 12


class ModelInvalid(UserError):
    reason = "ModelInvalid"
    exit_code = 13


class NotFound(UserError):
    reason = "NotFound"
    exit_code = 14


class S3AccessDenied(UserError):
    reason = "S3AccessDenied"
    exit_code = 15


class InfraError(KubetuneError):
    exit_code = 20


class StorageError(InfraError):
    reason = "StorageError"
    exit_code = 21


class GPUOOM(InfraError):
    reason = "GPUOOM"
    exit_code = 22


class ExportFailed(InfraError):
    reason = "ExportFailed"
    exit_code = 23


class Preempted(InfraError):
    """SIGTERM arrived; a checkpoint was saved. 128 + SIGTERM, the code Kubernetes expects."""

    reason = "Preempted"
    exit_code = 143
