"""Live progress: Prometheus /metrics and /progress JSON from one small HTTP server.

The operator polls /progress (same port as /metrics) to fill FineTuneJob.status; the document
is `kubetune_api.protocol.ProgressReport`, the model the operator parses it with. Prometheus
scrapes /metrics. Per-job labels are fine here: one trainer process serves one job.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from kubetune_api.protocol import ProgressReport

LABELS = ("finetunejob", "finetunejob_namespace")


class TrainerMetrics:
    """Prometheus series for one job, in their own registry (no process-global state)."""

    def __init__(self, job: str, namespace: str | None) -> None:
        self.registry = CollectorRegistry()
        self.labels = {"finetunejob": job, "finetunejob_namespace": namespace or ""}

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(f"kubetune_trainer_{name}", doc, LABELS, registry=self.registry)

        self.step = gauge("step", "Optimizer steps done.")
        self.total_steps = gauge("total_steps", "Optimizer steps planned.")
        self.epoch = gauge("epoch", "Fractional epoch.")
        self.train_loss = gauge("train_loss", "Latest training loss (mean per trainable token).")
        self.eval_loss = gauge("eval_loss", "Latest evaluation loss.")
        self.baseline_eval_loss = gauge("baseline_eval_loss", "Evaluation loss of the base model.")
        self.learning_rate = gauge("learning_rate", "Current learning rate.")
        self.tokens_per_second = gauge("tokens_per_second", "Training throughput (non-padding tokens).")
        self.progress_ratio = gauge("progress_ratio", "Fraction of planned steps done, 0..1.")
        self.eta_seconds = gauge("eta_seconds", "Estimated seconds until training ends.")
        self.last_update = gauge("last_update_timestamp_seconds", "Unix time of the last progress update.")
        self.trained_tokens = Counter(
            "kubetune_trainer_trained_tokens",
            "Tokens trained on (non-padding).",
            LABELS,
            registry=self.registry,
        )
        self.checkpoints = Counter("kubetune_trainer_checkpoints", "Checkpoints saved.", LABELS, registry=self.registry)
        self.gpu_memory = Gauge(
            "kubetune_trainer_gpu_memory_bytes",
            "GPU memory of this process (kind: allocated, reserved, peak); 0 when training on CPU.",
            (*LABELS, "kind"),
            registry=self.registry,
        )
        for metric in (self.trained_tokens, self.checkpoints):
            metric.labels(**self.labels)  # export 0 before the first increment

    def update(self, report: ProgressReport, new_tokens: int = 0, new_checkpoints: int = 0) -> None:
        lab = self.labels
        self.step.labels(**lab).set(report.step)
        self.total_steps.labels(**lab).set(report.total_steps)
        self.epoch.labels(**lab).set(report.epoch)
        self.progress_ratio.labels(**lab).set(report.progress_ratio)
        for gauge, value in (
            (self.last_update, report.last_update_time),
            (self.train_loss, report.train_loss),
            (self.eval_loss, report.eval_loss),
            (self.baseline_eval_loss, report.baseline_eval_loss),
            (self.learning_rate, report.learning_rate),
            (self.tokens_per_second, report.tokens_per_second),
            (self.eta_seconds, report.eta_seconds),
        ):
            if value is not None:
                gauge.labels(**lab).set(value)
        if new_tokens:
            self.trained_tokens.labels(**lab).inc(new_tokens)
        if new_checkpoints:
            self.checkpoints.labels(**lab).inc(new_checkpoints)

    def set_gpu_memory(self, allocated: int, reserved: int, peak: int) -> None:
        for kind, value in (("allocated", allocated), ("reserved", reserved), ("peak", peak)):
            self.gpu_memory.labels(**self.labels, kind=kind).set(value)


class ProgressReporter:
    """Holds the report, mirrors it into metrics, and serves both over HTTP when asked."""

    def __init__(self, job: str, namespace: str | None) -> None:
        self.report = ProgressReport(last_update_time=time.time())
        self.metrics = TrainerMetrics(job, namespace)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def update(self, new_tokens: int = 0, new_checkpoints: int = 0, **changes: Any) -> None:
        """Change fields of the report by their field names (a name the report lacks is an error)."""
        unknown = changes.keys() - ProgressReport.model_fields.keys()
        if unknown:
            raise TypeError(f"ProgressReport has no field(s) {sorted(unknown)}")
        with self._lock:
            self.report = self.report.model_copy(update={**changes, "last_update_time": time.time()})
            self.metrics.update(self.report, new_tokens, new_checkpoints)

    def snapshot(self) -> dict[str, Any]:
        """The /progress document (camelCase)."""
        with self._lock:
            return self.report.to_wire()

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP server in a daemon thread; returns the bound port."""
        reporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body, ctype = generate_latest(reporter.metrics.registry), CONTENT_TYPE_LATEST
                elif path == "/progress":
                    body, ctype = json.dumps(reporter.snapshot()).encode(), "application/json"
                elif path in ("/healthz", "/readyz"):
                    body, ctype = b"ok", "text/plain"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
                return

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="kubetune-metrics", daemon=True).start()
        return int(self._server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
