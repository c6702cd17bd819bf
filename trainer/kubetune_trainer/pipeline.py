"""One fine-tuning run, start to finish:

    stage model + data -> prepare -> resume or evaluate base -> train -> evaluate -> export

`run_training` is what both `kubetune-train` (in a pod) and `kubetune run` (on a laptop)
call. It returns a Summary, or raises a KubetuneError that says what went wrong and
whether it is the user's to fix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic.alias_generators import to_camel

from kubetune_api.trainer_config import TrainerConfig
from kubetune_trainer.errors import KubetuneError, Preempted
from kubetune_trainer.export import MANIFEST
from kubetune_trainer.progress import ProgressReporter
from kubetune_trainer.storage import Storage, parse_uri, sha256_file

log = logging.getLogger(__name__)


@dataclass
class Summary:
    """The run's outcome; also the termination message (kept under 4 KB)."""

    status: str  # Succeeded | Failed | Preempted
    job: str
    reason: str | None = None
    message: str | None = None
    exit_code: int = 0
    user_error: bool | None = None
    step: int = 0
    total_steps: int = 0
    trained_tokens: int = 0
    train_loss: float | None = None
    eval: dict[str, Any] = field(default_factory=dict)
    adapter_uri: str | None = None
    manifest_uri: str | None = None
    duration_seconds: float = 0.0
    already_complete: bool = False

    def to_json(self, limit: int = 4096) -> str:
        """camelCase, like the rest of the Kubernetes-facing surface."""
        raw = {to_camel(k): v for k, v in asdict(self).items() if v not in (None, {}, [])}
        if self.eval:
            raw["eval"] = {
                k: {to_camel(m): v for m, v in (d or {}).items() if m != "examples"} for k, d in self.eval.items()
            }
        text = json.dumps(raw, separators=(",", ":"))
        # Shrink the message first, then drop optional detail, so the result stays valid JSON.
        if len(text) > limit and self.message:
            raw["message"] = self.message[: max(0, len(self.message) - (len(text) - limit) - 16)] + "…"
            text = json.dumps(raw, separators=(",", ":"))
        for optional in ("eval", "adapterUri", "manifestUri", "message"):
            if len(text) <= limit:
                break
            raw.pop(optional, None)
            text = json.dumps(raw, separators=(",", ":"))
        return text


def failure_summary(job: str, error: KubetuneError, started: float) -> Summary:
    return Summary(
        status="Preempted" if isinstance(error, Preempted) else "Failed",
        job=job,
        reason=error.reason,
        message=error.describe(),
        exit_code=error.exit_code,
        user_error=error.user_error,
        duration_seconds=round(time.time() - started, 2),
    )


@contextmanager
def sigterm_sets(event: threading.Event) -> Iterator[None]:
    """SIGTERM (eviction, preemption, `kubectl delete pod`) asks the loop to checkpoint and stop."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *_: event.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def fingerprint_dir(path: Path) -> dict[str, Any]:
    files = {p.relative_to(path).as_posix(): p for p in sorted(path.rglob("*")) if p.is_file()}
    listing = {name: {"sha256": sha256_file(p), "size": p.stat().st_size} for name, p in files.items()}
    digest = hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()
    return {"sha256": digest, "files": listing}


def resume_key(config: TrainerConfig, model_fp: str, data_fps: list[str]) -> str:
    """What must match for a checkpoint to be resumable: data, model and the training maths."""
    training = config.training.model_dump(exclude={"checkpoint_every_steps", "keep_checkpoints", "log_every_steps"})
    payload = {
        "model": model_fp,
        "data": data_fps,
        "lora": config.lora.model_dump(),
        "training": training,
        "dataset": config.dataset.model_dump(exclude={"train", "validation"}),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


def existing_result(storage: Storage, config: TrainerConfig) -> Summary | None:
    """A finished run at this output is reported, not redone: reruns are idempotent."""
    text = storage.read_text_uncached(parse_uri(config.output.uri).join(MANIFEST).uri)
    if text is None:
        return None
    manifest = json.loads(text)
    return Summary(
        status="Succeeded",
        job=config.job_name,
        step=manifest.get("training", {}).get("steps", 0),
        total_steps=manifest.get("training", {}).get("steps", 0),
        trained_tokens=manifest.get("training", {}).get("trainedTokens", 0),
        eval=manifest.get("eval", {}),
        adapter_uri=config.output.uri,
        manifest_uri=parse_uri(config.output.uri).join(MANIFEST).uri,
        already_complete=True,
    )


def run_training(
    config: TrainerConfig,
    reporter: ProgressReporter | None = None,
    on_step: Callable[..., None] | None = None,
    on_event: Callable[[str], None] | None = None,
) -> Summary:
    """Run one job; heavy imports happen here so `kubetune validate` stays light."""
    from kubetune_trainer.runner import Runner

    reporter = reporter or ProgressReporter(config.job_name, config.namespace)
    stop = threading.Event()
    with (
        sigterm_sets(stop),
        tempfile.TemporaryDirectory(prefix="kubetune-", dir=config.runtime.work_dir) as tmp,
    ):
        runner = Runner(config, reporter, stop, Path(tmp), on_step=on_step, on_event=on_event)
        return runner.run()
