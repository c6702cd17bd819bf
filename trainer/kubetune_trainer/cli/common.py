"""What both commands share: logging, reading input files, the termination message, /progress."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

from kubetune_api.protocol import TERMINATION_MESSAGE_LIMIT_BYTES
from kubetune_api.trainer_config import RuntimeOptions
from kubetune_trainer.errors import InvalidSpec
from kubetune_trainer.progress import ProgressReporter

log = logging.getLogger("kubetune")


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3", "matplotlib", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Library progress bars and deprecation chatter drown the trainer's own output.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    except ImportError:  # validate-only installs without transformers
        pass


def read_text(path: Path, what: str) -> str:
    """A config or manifest file as text; unreadable or non-UTF-8 files are the user's to fix."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidSpec(f"{path}: cannot read the {what}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise InvalidSpec(f"{path}: the {what} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def write_termination_message(path: str | None, text: str) -> None:
    """Leave the outcome where the kubelet reads it; the kubelet keeps only the first 4096 bytes."""
    if not path:
        return
    try:
        Path(path).write_bytes(text.encode()[:TERMINATION_MESSAGE_LIMIT_BYTES])
    except OSError as exc:  # never let reporting hide the real outcome
        log.warning("cannot write termination message to %s: %s", path, exc)


def serve_progress(reporter: ProgressReporter, runtime: RuntimeOptions) -> None:
    """Serve /metrics and /progress when the runtime asks for a port."""
    if runtime.metrics_port is not None:
        port = reporter.serve(runtime.metrics_host, runtime.metrics_port)
        log.info("serving /metrics and /progress on port %d", port)
