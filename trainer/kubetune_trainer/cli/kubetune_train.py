"""`kubetune-train --config trainer.json`: the trainer pod's entrypoint (also usable alone).

Exit codes (see errors.py): 0 ok, 10-19 user error, 20-29 infrastructure error, 143 stopped
by SIGTERM after a checkpoint. The outcome (a RunSummary, or with --validate-only a
PreflightReport) goes to the termination-message path and to stdout.

Multi-GPU: `accelerate launch -m kubetune_trainer.cli.kubetune_train --config trainer.json`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

from pydantic import ValidationError

from kubetune_api.protocol import RunSummary
from kubetune_api.trainer_config import TrainerConfig
from kubetune_api.validation_messages import describe
from kubetune_trainer.cli.common import configure_logging, read_text, serve_progress, write_termination_message
from kubetune_trainer.errors import InvalidSpec, KubetuneError, failure_summary
from kubetune_trainer.progress import ProgressReporter
from kubetune_trainer.signals import sigterm_sets

log = logging.getLogger("kubetune")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubetune-train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="trainer.json (TrainerConfig)")
    parser.add_argument("--log-level", default=os.environ.get("KUBETUNE_LOG_LEVEL", "INFO"))
    parser.add_argument(
        "--validate-only",
        action="store_true",
        help="check the data and plan the steps without loading weights or training (the operator's preflight)",
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
    except ConfigError as exc:
        return report_failure(args.config.stem, exc, time.time(), exc.termination_message_path)
    except KubetuneError as exc:
        return report_failure(args.config.stem, exc, time.time(), None)

    if args.validate_only:
        return validate_only(config, args.plan_for, args.world_size)

    reporter = ProgressReporter(config.job_name, config.namespace)
    serve_progress(reporter, config.runtime)
    try:
        summary, code = train_from_config(config, reporter)
        write_termination_message(config.runtime.termination_message_path, summary.to_termination_message())
        print(summary.to_termination_message(), flush=True)
        if config.runtime.metrics_port is not None:
            linger(config.runtime.metrics_linger_seconds)
    finally:
        reporter.close()
    return code


class ConfigError(InvalidSpec):
    """An unusable trainer.json; carries the termination-message path when it could be read."""

    def __init__(self, message: str, termination_message_path: str | None = None) -> None:
        super().__init__(message)
        self.termination_message_path = termination_message_path


def load_config(path: Path) -> TrainerConfig:
    text = read_text(path, "trainer config")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidSpec(f"{path} line {exc.lineno}: invalid JSON: {exc.msg}") from exc
    try:
        return TrainerConfig.model_validate(raw)
    except ValidationError as exc:
        # The config is bad, but where to report that may still be readable in it.
        runtime = raw.get("runtime") if isinstance(raw, dict) else None
        termination = runtime.get("termination_message_path") if isinstance(runtime, dict) else None
        problems = describe(exc, TrainerConfig, by_alias=False)
        raise ConfigError(f"{path}: {problems}", termination if isinstance(termination, str) else None) from exc


def validate_only(config: TrainerConfig, plan_device: str | None = None, world_size: int = 1) -> int:
    """--validate-only: print the PreflightReport; it is also the termination message the operator reads."""
    from kubetune_trainer.validate import validate_job  # stages data and loads a tokenizer: not for --help

    started = time.time()
    try:
        report = validate_job(config, plan_device, world_size)
    except KubetuneError as exc:
        return report_failure(config.job_name, exc, started, config.runtime.termination_message_path)
    # The operator reads the termination message, which the kubelet cuts at 4 KiB: shortened to fit.
    write_termination_message(config.runtime.termination_message_path, report.to_termination_message())
    print(report.to_wire_json(), flush=True)
    return 0


def train_from_config(config: TrainerConfig, reporter: ProgressReporter) -> tuple[RunSummary, int]:
    from kubetune_trainer.recipe import run_training  # imports torch: not for --help or a bad config

    started = time.time()
    try:
        return run_training(config, reporter), 0
    except KubetuneError as exc:
        log.error("%s", exc.describe())
        return failure_summary(config.job_name, exc, started), exc.exit_code


def report_failure(job: str, exc: KubetuneError, started: float, termination_message_path: str | None) -> int:
    """Log the error, leave the failure summary where the operator and the user look, return the exit code."""
    log.error("%s", exc.describe())
    failed = failure_summary(job, exc, started)
    write_termination_message(termination_message_path, failed.to_termination_message())
    print(failed.to_termination_message(), file=sys.stderr)
    return exc.exit_code


def linger(seconds: float) -> None:
    """Keep the metrics server up a little after the run: the final eval loss exists only now,
    and a scraper (every 15-30 s) would otherwise never see it. SIGTERM ends the wait."""
    if seconds <= 0:
        return
    deadline = time.monotonic() + seconds
    with sigterm_sets(threading.Event()) as stop:
        # Polled, not stop.wait(): the handler runs on this same thread, between sleeps.
        while not stop.is_set() and time.monotonic() < deadline:
            time.sleep(0.1)


if __name__ == "__main__":
    raise SystemExit(main())
