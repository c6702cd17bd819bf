"""Failure taxonomy: every trainer failure is one exception class per reason.

The reason, exit code and blame (user or infrastructure) of each class come from one table,
`kubetune_api.protocol.FAILURES`, which the operator reads too: it maps the exit code (and
the termination message) back to the reason and decides whether a retry can help. User
errors (bad data, bad config, a URI that does not exist or is forbidden) are never retried;
infrastructure errors (storage hiccups, preemption) are retried as a new attempt that resumes
from the latest checkpoint.

    exit 0      success
    exit 10-19  user error       -> not retried
    exit 20-29  infrastructure   -> retried up to backoffLimit (GPUOOM: not, a retry OOMs again)
    exit 143    SIGTERM: checkpoint saved, then stopped (preempted / evicted)
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from kubetune_api.protocol import FAILURES, ErrorKind, FailureReason, RunStatus, RunSummary


class KubetuneError(Exception):
    """Base class; a subclass names its `reason`, and the table gives its exit code and blame."""

    reason: ClassVar[FailureReason] = FailureReason.INFRASTRUCTURE_ERROR
    exit_code: ClassVar[int]
    user_error: ClassVar[bool]
    error_kind: ClassVar[ErrorKind]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._take_row_from_table()

    @classmethod
    def _take_row_from_table(cls) -> None:
        info = FAILURES[cls.reason]
        if info.exit_code is None:  # a reason only the operator observes cannot be raised here
            raise TypeError(f"{cls.__name__}: {info.reason} has no trainer exit code")
        cls.exit_code = info.exit_code
        cls.user_error = info.user_error
        cls.error_kind = info.kind

    @property
    def kind(self) -> str:
        return {ErrorKind.USER: "user error", ErrorKind.UNSUPPORTED: "not supported by kubetune"}.get(
            self.error_kind, "infrastructure error"
        )

    def describe(self) -> str:
        return f"{self.reason} ({self.kind}): {self}"


KubetuneError._take_row_from_table()


class UserError(KubetuneError):
    reason = FailureReason.USER_ERROR


class InvalidSpec(UserError):
    reason = FailureReason.INVALID_SPEC


class DatasetInvalid(UserError):
    reason = FailureReason.DATASET_INVALID


class ModelInvalid(UserError):
    reason = FailureReason.MODEL_INVALID


class NotFound(UserError):
    reason = FailureReason.NOT_FOUND


class S3AccessDenied(UserError):
    reason = FailureReason.S3_ACCESS_DENIED


class DataQualityFailed(UserError):
    """preflight.failOnWarnings and the data-quality report has warnings."""

    reason = FailureReason.DATA_QUALITY_FAILED


class UnsupportedModel(KubetuneError):
    """An architecture kubetune cannot train (yet): our limit, so neither a user error nor retried."""

    reason = FailureReason.UNSUPPORTED_MODEL


class InfraError(KubetuneError):
    reason = FailureReason.INFRASTRUCTURE_ERROR


class StorageError(InfraError):
    reason = FailureReason.STORAGE_ERROR


class GPUOOM(InfraError):
    reason = FailureReason.GPU_OOM


class ExportFailed(InfraError):
    reason = FailureReason.EXPORT_FAILED


class Preempted(InfraError):
    """SIGTERM arrived; a checkpoint was saved. 128 + SIGTERM, the code Kubernetes expects."""

    reason = FailureReason.PREEMPTED


def failure_summary(job: str, error: KubetuneError, started: float) -> RunSummary:
    """The termination message of a run that ended with `error`."""
    return RunSummary(
        status=RunStatus.PREEMPTED if isinstance(error, Preempted) else RunStatus.FAILED,
        job=job,
        reason=error.reason,
        message=error.describe(),
        exit_code=error.exit_code,
        user_error=error.user_error,
        duration_seconds=round(time.time() - started, 2),
    )
