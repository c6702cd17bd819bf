"""`kubetune`: run or check a FineTuneJob manifest on this machine, no cluster needed.

    kubetune validate job.yaml      schema + dataset checks, token counts, planned steps
    kubetune run job.yaml           train in-process with a progress bar, then a summary

The manifest is the same YAML you would `kubectl apply`; it is validated with the same
model the CRD is generated from and mapped with the same function the operator uses.
Relative paths in it are resolved against the manifest's folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

from kubetune_api.gpus import GIB, GPU_TYPES, GpuType, gpu_type_named
from kubetune_api.protocol import DataQuality, EvalResult, FitPlan, PreflightReport, RunSummary
from kubetune_api.spec import FineTuneJob
from kubetune_api.trainer_config import (
    ManifestError,
    RuntimeOptions,
    TrainerConfig,
    load_manifest,
    select_finetunejob,
    trainer_config_from_job,
)
from kubetune_api.validation_messages import describe
from kubetune_trainer.cli.common import configure_logging, read_text, serve_progress
from kubetune_trainer.errors import InvalidSpec, KubetuneError, failure_summary

if TYPE_CHECKING:
    from kubetune_trainer.checkpoint import TrainState  # imports torch: only once training starts

log = logging.getLogger("kubetune")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubetune", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("run", "train locally"), ("validate", "check the manifest and its dataset")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("manifest", type=Path)
        p.add_argument("--cache-dir", default="~/.cache/kubetune")
        p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
        p.add_argument("--log-level", default="WARNING")
    run_parser = sub.choices["run"]
    run_parser.add_argument("--overwrite", action="store_true", help="delete the output first and train anew")
    run_parser.add_argument("--metrics-port", type=int, help="serve /metrics and /progress on this port")
    run_parser.add_argument("--no-progress", action="store_true")
    validate_parser = sub.choices["validate"]
    validate_parser.add_argument("--json", action="store_true", help="print the report as JSON")
    validate_parser.add_argument(
        "--fail-on-warnings",
        action="store_true",
        help="exit 16 (DataQualityFailed) when the data-quality report has warnings, as spec.preflight."
        "failOnWarnings: true does (which this command honours too)",
    )
    validate_parser.add_argument(
        "--gpu-type",
        help=f"plan memory, fit and time for this GPU type ({', '.join(GPU_TYPES)}, or a node label value such "
        "as NVIDIA-H100-80GB-HBM3); default: the type resources.nodeSelector names",
    )
    args = parser.parse_args(argv)
    configure_logging(args.log_level)

    runtime = RuntimeOptions(
        cache_dir=args.cache_dir,
        device=args.device,
        progress_bar=args.command == "run" and not args.no_progress,
        metrics_port=getattr(args, "metrics_port", None),
        metrics_host="127.0.0.1",
    )
    try:
        config = config_for(args.manifest, runtime)
        if args.command == "validate":
            from kubetune_trainer.validate import validate_job  # loads a tokenizer: not for --help

            resources = config.resources
            report = validate_job(
                config,
                plan_device="cuda" if resources.gpus else None,  # plan for the job's GPUs, not this machine
                world_size=max(1, resources.gpus) * resources.nodes,
                gpu_type=_gpu_type(args.gpu_type),
            )
            if args.json:
                print(json.dumps(report.to_wire(), indent=2))
            else:
                _print_validation(report)
            from kubetune_trainer import quality

            # What the operator would do with this report: warn, or with failOnWarnings fail.
            quality.enforce(report.quality, config.preflight.fail_on_warnings or args.fail_on_warnings)
            return 0
    except KubetuneError as exc:
        print(f"error: {exc.describe()}", file=sys.stderr)
        return exc.exit_code
    return run(config, overwrite=args.overwrite)


class StrictLoader(yaml.SafeLoader):
    """YAML that rejects duplicate keys, as kubectl's strict field validation does."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_manifest(path: Path) -> FineTuneJob:
    text = read_text(path, "manifest")
    try:
        docs = [d for d in yaml.load_all(text, Loader=StrictLoader) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise InvalidSpec(f"{path}{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from exc
    try:
        document = select_finetunejob(docs)
    except ManifestError as exc:
        raise InvalidSpec(f"{path}: {exc}") from exc
    try:
        return load_manifest(document)
    except ValidationError as exc:
        raise InvalidSpec(f"{path}: {describe(exc, FineTuneJob)}") from exc


def config_for(path: Path, runtime: RuntimeOptions) -> TrainerConfig:
    return trainer_config_from_job(read_manifest(path), runtime, base_dir=path.resolve().parent)


def _gpu_type(name: str | None) -> GpuType | None:
    if name is None:
        return None
    gpu = gpu_type_named(name)
    if gpu is None:
        raise InvalidSpec(f"--gpu-type {name}: not a GPU type kubetune knows ({', '.join(GPU_TYPES)})")
    return gpu


def _print_validation(report: PreflightReport) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{report.job}: dataset and plan", show_header=False)
    for section in (report.data, report.plan):
        for key, value in section.model_dump(by_alias=False).items():
            table.add_row(key, str(value))
    if report.model is not None:
        table.add_row("model", f"{report.model.architecture} ({report.model.model_type})")
    console = Console()
    console.print(table)
    if report.fit is not None:
        console.print(_fit_table(report.fit))
    if report.quality is not None:
        _print_quality(console, report.quality)


def _print_quality(console: Any, quality: DataQuality) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="data quality (docs/data.md#quality)", show_header=False)
    lengths = [("train", quality.train_lengths), ("validation", quality.validation_lengths)]
    for name, length in lengths:
        if length is not None:
            table.add_row(f"{name} tokens per row", f"p50 {length.p50}, p95 {length.p95}, max {length.max}")
    table.add_row("truncated rows", f"{quality.truncated_rows} of {quality.rows} ({quality.truncated_share:.1%})")
    for label, value in (
        ("dropped rows", quality.dropped_rows),
        ("duplicate rows", quality.duplicate_rows),
        ("near-duplicate rows", quality.near_duplicate_rows),
        ("validation rows in training", quality.leaked_validation_rows),
        ("empty answers", quality.empty_answers),
        ("trainable tokens", quality.trainable_tokens),
    ):
        table.add_row(label, str(value))
    table.add_row("rows per format", ", ".join(f"{fmt} {n}" for fmt, n in quality.rows_per_format.items()))
    console.print(table)
    if not quality.warnings:
        console.print("data quality: no warnings")
    for warning in quality.warnings:
        field = f" [{warning.field}]" if warning.field else ""
        console.print(f"[yellow]{escape(f'warning {warning.code}{field}: {warning.message}')}[/yellow]", soft_wrap=True)


def _fit_table(fit: FitPlan) -> Any:
    from rich.table import Table

    def gib(n: int | None) -> str:
        return "?" if n is None else f"{n / GIB:.1f} GiB"

    def hours(h: float | None) -> str:
        return "? (unknown GPU type)" if h is None else f"{h:.3g}"

    table = Table(title=f"fit and time on {fit.gpu_type or 'an unknown GPU type'} ({gib(fit.gpu_memory_bytes)})")
    for column in ("", "method", "GPUs", "micro-batch", "checkpointing", "memory per GPU", "GPU-hours"):
        table.add_column(column)
    rows = [("as written", fit.job)] + ([("cheapest fit", fit.suggestion)] if fit.suggestion else [])
    for label, option in rows:
        table.add_row(
            label,
            option.method,
            str(option.gpus),
            str(option.micro_batch),
            "on" if option.gradient_checkpointing else "off",
            gib(option.memory_bytes),
            hours(option.gpu_hours),
        )
    verdict = {True: "fits", False: "does not fit", None: "no verdict"}[fit.fits]
    if fit.fits is False and fit.suggestion is None:
        verdict += ": no change the planner knows makes it fit (even FSDP over 64 GPUs); shorten maxSeqLength"
    mfu = f", assumed MFU {fit.assumed_mfu:.0%}" if fit.assumed_mfu is not None else ""
    wall = f", about {fit.wall_hours:.3g} h of training" if fit.wall_hours is not None else ""
    table.caption = f"{verdict}; {fit.tokens:,} tokens at {fit.flops_per_token:.3g} FLOPs/token{mfu}{wall}"
    return table


def _print_summary(summary: RunSummary) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    evals = summary.eval
    base = (evals.baseline if evals else None) or EvalResult()
    tuned = (evals.finetuned if evals else None) or EvalResult()
    table = Table(title=f"{summary.job}: evaluation on held-out rows")
    table.add_column("metric")
    table.add_column("base model", justify="right")
    table.add_column("fine-tuned", justify="right")
    for label, fmt, values in (
        ("eval loss", "{:.4f}", (base.loss, tuned.loss)),
        ("perplexity", "{:.2f}", (base.perplexity, tuned.perplexity)),
        ("exact match", "{:.1%}", (base.exact_match, tuned.exact_match)),
    ):
        if any(value is not None for value in values):
            table.add_row(label, *(fmt.format(value) if value is not None else "-" for value in values))
    for name, value in (tuned.scores or {}).items():
        if name != "exact_match":
            baseline = (base.scores or {}).get(name)
            table.add_row(name.replace("_", " "), "-" if baseline is None else f"{baseline:.1%}", f"{value:.1%}")
    console.print(table)
    gate = summary.gate
    if gate is not None:
        verdict = "[green]passed[/green]" if gate.passed else "[red]failed[/red] (the adapter is published anyway)"
        console.print(f"evaluation gate {verdict}: {gate.reason}: {gate.message}")
    console.print(
        f"steps: {summary.step}, trained tokens: {summary.trained_tokens:,}, time: {summary.duration_seconds:.1f}s"
    )
    model = summary.model
    if model is not None:
        console.print(f"model:    {model.architecture} ({model.model_type}), attention {model.attention}")
        if model.packing is not None and model.packing.requested and not model.packing.used:
            console.print(f"[yellow]warning: packing turned off: {model.packing.reason}[/yellow]")
    console.print(f"adapter:  {summary.adapter_uri}")
    console.print(f"manifest: {summary.manifest_uri}")


def run(config: TrainerConfig, overwrite: bool) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from kubetune_trainer.progress import ProgressReporter
    from kubetune_trainer.recipe import run_training
    from kubetune_trainer.storage import Storage, parse_uri

    if overwrite:
        Storage(config.storage, config.runtime.cache_dir).delete_prefix(parse_uri(config.output.uri).uri)
    reporter = ProgressReporter(config.job_name, config.namespace)
    serve_progress(reporter, config.runtime)
    columns = (
        TextColumn("[bold]training"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[tps]} tok/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    started = time.time()
    with Progress(*columns, disable=not config.runtime.progress_bar, transient=False) as bar:
        task = bar.add_task("train", total=None, loss="-", tps="-")

        def on_step(state: TrainState, info: dict[str, float]) -> None:
            bar.update(
                task,
                completed=state.step,
                total=reporter.report.total_steps,
                loss=f"{info['loss']:.4f}",
                tps=f"{info['tokens_per_second']:,.0f}",
            )

        def on_event(message: str) -> None:
            bar.console.print(f"[dim]{time.time() - started:6.1f}s[/dim] {message}")

        try:
            summary = run_training(config, reporter, on_step=on_step, on_event=on_event)
        except KubetuneError as exc:
            failed = failure_summary(config.job_name, exc, started)
            bar.console.print(f"[red]Failed: {exc.describe()}[/red]")
            print(failed.to_termination_message(), file=sys.stderr)
            return exc.exit_code
        finally:
            reporter.close()
    if summary.already_complete:
        print(f"{config.output.uri} already holds a finished run; pass --overwrite to train again.")
    _print_summary(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
