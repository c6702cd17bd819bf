"""`kubetune-train --config trainer.json`: the trainer pod's entrypoint (also usable alone).

Exit codes (see errors.py): 0 ok, 10-19 user error, 20-29 infrastructure error, 143 stopped
by SIGTERM after a checkpoint. The summary JSON goes to the termination-message path.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

from pydantic import ValidationError

from kubetune_api.trainer_config import TrainerConfig
from kubetune_trainer.errors import InvalidSpec, KubetuneError
from kubetune_trainer.pipeline import Summary, failure_summary, run_training
from kubetune_trainer.progress import ProgressReporter

log = logging.getLogger("kubetune")

TERMINATION_MESSAGE_LIMIT = 4096


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


def pydantic_problems(exc: ValidationError, prefix: str = "") -> str:
    """One line per problem, naming the field by its wire (camelCase) path."""
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"])
        lines.append(f"{prefix}{path}: {err['msg']}")
    return "; ".join(lines)


class ConfigError(InvalidSpec):
    """An unusable trainer.json; carries the termination-message path when it could be read."""

    def __init__(self, message: str, termination_message_path: str | None = None) -> None:
        super().__init__(message)
        self.termination_message_path = termination_message_path


def read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidSpec(f"{path}: cannot read the {what}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise InvalidSpec(f"{path}: the {what} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def load_config(path: Path) -> TrainerConfig:
    text = read_text(path, "trainer config")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidSpec(f"{path} line {exc.lineno}: invalid JSON: {exc.msg}") from exc
    try:
        return TrainerConfig.model_validate(raw)
    except ValidationError as exc:
        runtime = raw.get("runtime") if isinstance(raw, dict) else None
        termination = runtime.get("termination_message_path") if isinstance(runtime, dict) else None
        raise ConfigError(
            f"{path}: {pydantic_problems(exc)}", termination if isinstance(termination, str) else None
        ) from exc


def write_termination_message(path: str | None, text: str) -> None:
    if not path:
        return
    try:
        Path(path).write_text(text[:TERMINATION_MESSAGE_LIMIT])
    except OSError as exc:  # never let reporting hide the real outcome
        log.warning("cannot write termination message to %s: %s", path, exc)


def report_failure(job: str, exc: KubetuneError, started: float, termination_message_path: str | None) -> int:
    """Log the error, leave the failure summary where the operator and the user look, return the exit code."""
    log.error("%s", exc.describe())
    failed = failure_summary(job, exc, started)
    write_termination_message(termination_message_path, failed.to_json(TERMINATION_MESSAGE_LIMIT))
    print(failed.to_json(), file=sys.stderr)
    return exc.exit_code


def train_from_config(config: TrainerConfig, reporter: ProgressReporter) -> tuple[Summary, int]:
    started = time.time()
    try:
        summary = run_training(config, reporter)
        return summary, 0
    except KubetuneError as exc:
        log.error("%s", exc.describe())
        return failure_summary(config.job_name, exc, started), exc.exit_code


def preflight(config: TrainerConfig, plan_device: str | None = None, world_size: int = 1) -> int:
    """Print the validation report; it is also the termination message the operator reads."""
    from kubetune_trainer.preflight import validate_dataset

    started = time.time()
    try:
        report = validate_dataset(config, plan_device, world_size)
    except KubetuneError as exc:
        return report_failure(config.job_name, exc, started, config.runtime.termination_message_path)
    text = json.dumps({"status": "Validated", **report}, separators=(",", ":"))
    write_termination_message(config.runtime.termination_message_path, text)
    print(text, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubetune-train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="trainer.json (TrainerConfig)")
    parser.add_argument("--log-level", default=os.environ.get("KUBETUNE_LOG_LEVEL", "INFO"))
    parser.add_argument(
        "--validate-only",
        action="store_true",
        help="preflight: check the data and plan the steps without loading weights or training",
    )
    parser.add_argument(
        "--plan-for",
        choices=("cpu", "cuda"),
        help="with --validate-only: plan batch size, steps and memory for this device (default: the config's)",
    )
    parser.add_argument("--world-size", type=int, default=1, help="with --validate-only: training processes")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        config = load_config(args.config)
    except KubetuneError as exc:
        return report_failure(args.config.stem, exc, time.time(), getattr(exc, "termination_message_path", None))

    if args.validate_only:
        return preflight(config, args.plan_for, args.world_size)

    reporter = ProgressReporter(config.job_name, config.namespace)
    if config.runtime.metrics_port is not None:
        port = reporter.serve(config.runtime.metrics_host, config.runtime.metrics_port)
        log.info("serving /metrics and /progress on port %d", port)
    try:
        summary, code = train_from_config(config, reporter)
        write_termination_message(config.runtime.termination_message_path, summary.to_json(TERMINATION_MESSAGE_LIMIT))
        print(summary.to_json(), flush=True)
        if config.runtime.metrics_port is not None:
            linger(config.runtime.metrics_linger_seconds)
    finally:
        reporter.close()
    return code


def linger(seconds: float) -> None:
    """Keep the metrics server up a little after the run: the final eval loss exists only now,
    and a scraper (every 15-30 s) would otherwise never see it. SIGTERM ends the wait."""
    if seconds <= 0:
        return
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        deadline = time.monotonic() + seconds
        while not stop.is_set() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    raise SystemExit(main())
