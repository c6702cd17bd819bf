"""Operator metrics (prometheus-client), all prefixed `kubetune_`.

Labels are bounded (phase, reason): per-job series belong to the trainer's own metrics.
Job counts and the oldest queued age are computed at scrape time from what the reconciler
last saw, so they are never stale after a job is deleted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kubetune_api.status import GateOutcome, Phase


@dataclass
class JobState:
    phase: str
    queued_since: float | None = None  # unix time, while Queued
    evaluation: str | None = None  # the evaluation gate's verdict: Passed, Failed, or None without a gate


class JobTable(Collector):
    """phase of every FineTuneJob the operator knows -> two gauges."""

    def __init__(self) -> None:
        self.jobs: dict[tuple[str, str], JobState] = {}

    def collect(self) -> Iterator[Metric]:
        by_phase = GaugeMetricFamily("kubetune_finetunejobs", "FineTuneJobs by phase.", labels=["phase"])
        counts = {str(phase): 0 for phase in Phase}
        for state in self.jobs.values():
            counts[state.phase] = counts.get(state.phase, 0) + 1
        for phase, count in sorted(counts.items()):
            by_phase.add_metric([phase], count)
        yield by_phase
        # Counts, not a series per job: operator metrics carry no unbounded labels (the job's name
        # is in the EvaluationGateFailed Event and `kubectl get ftj`'s EVAL column).
        by_result = GaugeMetricFamily(
            "kubetune_finetunejob_evaluations",
            "FineTuneJobs with an evaluation gate, by its verdict (Passed, Failed).",
            labels=["result"],
        )
        results = dict.fromkeys((str(outcome) for outcome in GateOutcome), 0)
        for state in self.jobs.values():
            if state.evaluation is not None:
                results[state.evaluation] = results.get(state.evaluation, 0) + 1
        for result, count in sorted(results.items()):
            by_result.add_metric([result], count)
        yield by_result
        now = time.time()
        queued = [now - s.queued_since for s in self.jobs.values() if s.queued_since is not None]
        yield GaugeMetricFamily(
            "kubetune_oldest_queued_job_age_seconds",
            "Age of the FineTuneJob that has waited longest in Queued (0 when none).",
            value=max(queued, default=0.0),
        )


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.table = JobTable()
        self.registry.register(self.table)
        self.transitions = Counter(
            "kubetune_finetunejob_phase_transitions_total",
            "FineTuneJob phase changes.",
            ["from_phase", "to_phase"],
            registry=self.registry,
        )
        self.failures = Counter(
            "kubetune_finetunejob_failures_total",
            "FineTuneJobs that failed, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.retries = Counter(
            "kubetune_finetunejob_retries_total",
            "New attempts after an infrastructure failure, by the failure's reason.",
            ["reason"],
            registry=self.registry,
        )
        self.evaluation_gate_failures = Counter(
            "kubetune_finetunejob_evaluation_gate_failures_total",
            "FineTuneJobs that succeeded with an adapter below their evaluation gate, by the gate's metric.",
            ["metric"],
            registry=self.registry,
        )
        self.reconcile_errors = Counter(
            "kubetune_reconcile_errors_total", "Reconciles that raised an error.", registry=self.registry
        )
        self.reconcile_duration = Histogram(
            "kubetune_reconcile_duration_seconds",
            "Time of one reconcile (status read, decisions, API writes).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )
        self.children_created = Counter(
            "kubetune_children_created_total",
            "Jobs, ConfigMaps and Services created.",
            ["kind"],
            registry=self.registry,
        )

    def observe_phase(
        self,
        key: tuple[str, str],
        old: str | None,
        new: str,
        queued_since: float | None,
        evaluation: str | None = None,
    ) -> None:
        if old != new:
            self.transitions.labels(from_phase=old or "None", to_phase=new).inc()
        self.table.jobs[key] = JobState(new, queued_since if new == Phase.QUEUED else None, evaluation)

    def forget(self, key: tuple[str, str]) -> None:
        self.table.jobs.pop(key, None)
