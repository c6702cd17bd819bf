"""Live progress: Prometheus /metrics and /progress JSON from one small HTTP server.

The operator polls /progress (same port as /metrics) to fill FineTuneJob.status; Prometheus
scrapes /metrics. Per-job labels are fine here: one trainer process serves one job.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from pydantic.alias_generators import to_camel

LABELS = ("finetunejob", "finetunejob_namespace")


@dataclass
class ProgressState:
    """What the trainer knows about itself right now; /progress serves it as camelCase JSON."""

    phase: str = "Initializing"  # Initializing Staging Preparing Evaluating Running Checkpointing Exporting Done
    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    train_loss: float | None = None
    eval_loss: float | None = None
    baseline_eval_loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    trained_tokens: int = 0
    eta_seconds: float | None = None
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    last_update_time: float = field(default_factory=time.time)

    @property
    def progress_ratio(self) -> float:
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0

    def to_json(self) -> dict[str, Any]:
        raw = asdict(self)
        raw["progress_ratio"] = round(self.progress_ratio, 4)
        return {to_camel(k): v for k, v in raw.items()}


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

    def update(self, state: ProgressState, new_tokens: int = 0, new_checkpoints: int = 0) -> None:
        lab = self.labels
        self.step.labels(**lab).set(state.step)
        self.total_steps.labels(**lab).set(state.total_steps)
        self.epoch.labels(**lab).set(state.epoch)
        self.progress_ratio.labels(**lab).set(state.progress_ratio)
        self.last_update.labels(**lab).set(state.last_update_time)
        for gauge, value in (
            (self.train_loss, state.train_loss),
            (self.eval_loss, state.eval_loss),
            (self.baseline_eval_loss, state.baseline_eval_loss),
            (self.learning_rate, state.learning_rate),
            (self.tokens_per_second, state.tokens_per_second),
            (self.eta_seconds, state.eta_seconds),
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
    """Holds the state, mirrors it into metrics, and serves both over HTTP when asked."""

    def __init__(self, job: str, namespace: str | None) -> None:
        self.state = ProgressState()
        self.metrics = TrainerMetrics(job, namespace)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def update(self, new_tokens: int = 0, new_checkpoints: int = 0, **changes: Any) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(self.state, key, value)
            self.state.last_update_time = time.time()
            self.metrics.update(self.state, new_tokens, new_checkpoints)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return self.state.to_json()

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
