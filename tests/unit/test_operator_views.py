"""Views of children, semantic validation, settings and metrics: the operator's small pure parts."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

import pytest
from prometheus_client import generate_latest

from kubetune_operator.cli.kubetune_operator import parse_args, settings_from
from kubetune_operator.metrics import OperatorMetrics
from kubetune_operator.settings import OperatorSettings
from kubetune_operator.validation import validate
from kubetune_operator.views import job_view, owner_key, pod_view

LABELS = {"kubetune.io/finetunejob": "ft", "kubetune.io/attempt": "2", "app.kubernetes.io/component": "trainer"}


def test_job_view_reads_suspend_and_terminal_conditions() -> None:
    view = job_view(
        {
            "metadata": {"name": "ft-train-2", "labels": LABELS},
            "spec": {"suspend": True},
            "status": {
                "active": 1,
                "conditions": [
                    {"type": "Suspended", "status": "True"},
                    {"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "too long"},
                ],
            },
        }
    )
    assert (view.attempt, view.component, view.suspended, view.failed, view.complete) == (
        2,
        "trainer",
        True,
        True,
        False,
    )
    assert (view.failure_reason, view.failure_message, view.active) == ("DeadlineExceeded", "too long", 1)


def test_pod_view_reads_index_port_times_and_termination() -> None:
    view = pod_view(
        {
            "metadata": {
                "name": "ft-train-2-1-abcde",
                "labels": {**LABELS, "job-name": "ft-train-2", "batch.kubernetes.io/job-completion-index": "1"},
                "creationTimestamp": "2026-11-23T10:00:00Z",
                "deletionTimestamp": "2026-11-23T10:05:00Z",
            },
            "spec": {"containers": [{"ports": [{"name": "metrics", "containerPort": 9191}]}]},
            "status": {
                "phase": "Failed",
                "podIP": "10.1.2.3",
                "containerStatuses": [
                    {
                        "state": {
                            "terminated": {
                                "exitCode": 137,
                                "reason": "OOMKilled",
                                "startedAt": "2026-11-23T10:00:05Z",
                                "finishedAt": "2026-11-23T10:04:00Z",
                            }
                        }
                    }
                ],
            },
        }
    )
    assert (view.index, view.metrics_port, view.ip, view.job_name) == (1, 9191, "10.1.2.3", "ft-train-2")
    assert view.observation.terminated_reason == "OOMKilled" and view.observation.exit_code == 137
    assert view.finished and view.deleting and not view.running
    assert (view.started_at, view.finished_at) == (
        datetime(2026, 11, 23, 10, 0, 5, tzinfo=UTC),
        datetime(2026, 11, 23, 10, 4, 0, tzinfo=UTC),
    )


def test_owner_key_needs_the_label() -> None:
    assert owner_key("ns", LABELS) == ("ns", "ft")
    assert owner_key("ns", {}) is None


def test_validation_reports_schema_and_cluster_errors_together() -> None:
    spec, errors = validate(
        {
            "baseModel": {"uri": "/models/llama"},
            "dataset": {"train": "s3://data/train.jsonl"},
            "output": {"uri": "s3://out/run/"},
            "lora": {"r": 0},
        }
    )
    assert spec is None
    assert [e.split(":")[0] for e in errors] == ["spec.lora.r", "spec.baseModel.uri"]


def test_validation_accepts_s3_and_pvc() -> None:
    spec, errors = validate(
        {
            "baseModel": {"uri": "pvc://models/llama/"},
            "dataset": {"train": "s3://data/train.jsonl"},
            "output": {"uri": "s3://out/run/"},
        }
    )
    assert errors == [] and spec is not None


def test_settings_come_from_env_and_flags_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBETUNE_NAMESPACE", "team-a")
    monkeypatch.setenv("KUBETUNE_POLL_INTERVAL_SECONDS", "7")
    settings = settings_from(parse_args([]))
    assert settings.namespace == "team-a" and settings.poll_interval_seconds == 7
    assert settings_from(parse_args(["--all-namespaces"])).namespace is None
    assert settings_from(parse_args(["-n", "team-b", "--poll-interval", "2"])).poll_interval_seconds == 2
    with pytest.raises(SystemExit):
        parse_args(["-n", "a", "-A"])


def test_bad_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBETUNE_POLL_INTERVAL_SECONDS", "-1")
    with pytest.raises(ValueError, match="poll_interval_seconds"):
        OperatorSettings()
    assert isinstance(parse_args([]), argparse.Namespace)


def test_metrics_count_jobs_by_phase_and_the_oldest_queued() -> None:
    metrics = OperatorMetrics()
    metrics.observe_phase(("a", "x"), None, "Queued", queued_since=1.0)
    metrics.observe_phase(("a", "y"), None, "Running", queued_since=None)
    metrics.observe_phase(("a", "y"), "Running", "Succeeded", queued_since=None)
    text = generate_latest(metrics.registry).decode()
    assert 'kubetune_finetunejobs{phase="Queued"} 1.0' in text
    assert 'kubetune_finetunejobs{phase="Succeeded"} 1.0' in text
    assert 'kubetune_finetunejobs{phase="Running"} 0.0' in text
    assert 'kubetune_finetunejob_phase_transitions_total{from_phase="Running",to_phase="Succeeded"} 1.0' in text
    oldest = next(line for line in text.splitlines() if line.startswith("kubetune_oldest_queued_job_age_seconds "))
    assert float(oldest.split()[1]) > 1e9  # queued since 1970
    metrics.forget(("a", "x"))
    assert "kubetune_oldest_queued_job_age_seconds 0.0" in generate_latest(metrics.registry).decode()
