"""One LoRA fine-tuning run, as the steps of a recipe:

    setup     stage model + data, prepare and plan, load the model, add LoRA, resume from the
              newest complete checkpoint (or evaluate the base model)
    train     the optimizer steps (train.py), checkpointing as it goes and on SIGTERM
    evaluate  loss, perplexity and exact match on the validation rows
    export    adapter, tokenizer, reports and the provenance manifest, manifest.json last

`run_training` is what both `kubetune-train` (in a pod) and `kubetune run` (on a laptop)
call. It returns a RunSummary, or raises a KubetuneError that says what went wrong and
whether it is the user's to fix. Imports torch.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import set_seed

from kubetune_api.gate import judge_gate
from kubetune_api.protocol import (
    EvalResult,
    Evaluations,
    ModelReport,
    PackingDecision,
    RunStatus,
    RunSummary,
    TrainerPhase,
)
from kubetune_api.spec import Quantization
from kubetune_api.trainer_config import TrainerConfig
from kubetune_trainer import export, modeling, quality, quantization, sharding
from kubetune_trainer.checkpoint import CheckpointStore, TrainState, rescale_position, resume_key
from kubetune_trainer.errors import UnsupportedModel
from kubetune_trainer.eval_report import Answer, error_analysis, score_answers
from kubetune_trainer.evaluate import eval_loss, generate_answers
from kubetune_trainer.inputs import JobInputs, load_inputs
from kubetune_trainer.memory import estimate_memory
from kubetune_trainer.packing_check import check_packing
from kubetune_trainer.prepare import plan_steps
from kubetune_trainer.progress import ProgressReporter
from kubetune_trainer.signals import sigterm_sets
from kubetune_trainer.storage import Storage, fingerprint_dir
from kubetune_trainer.train import StepCallback, TrainContext, build_optimizer, build_scheduler, train

log = logging.getLogger(__name__)

EVAL_BATCH_SIZE = 8


def run_training(
    config: TrainerConfig,
    reporter: ProgressReporter | None = None,
    on_step: StepCallback | None = None,
    on_event: Callable[[str], None] | None = None,
) -> RunSummary:
    """Run one job in a scratch folder; SIGTERM checkpoints and stops it (Preempted)."""
    reporter = reporter or ProgressReporter(config.job_name, config.namespace)
    with (
        sigterm_sets(threading.Event()) as stop,
        tempfile.TemporaryDirectory(prefix="kubetune-", dir=config.runtime.work_dir) as tmp,
    ):
        return LoRAFinetuneRecipe(config, reporter, stop, Path(tmp), on_step=on_step, on_event=on_event).run()


@dataclass
class Session:
    """What setup() built and the later steps use."""

    accelerator: Accelerator
    numerics: modeling.Numerics
    inputs: JobInputs
    model: Any  # the PEFT model as accelerate prepared it (wrapped for DDP on several ranks)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    checkpoints: CheckpointStore
    state: TrainState
    resumed_from: int | None  # the checkpoint step, or None for a fresh start
    model_fingerprint: dict[str, Any]
    data_fingerprints: list[dict[str, Any]]
    model_report: ModelReport  # architecture, attention loaded, packing as run
    strategy: sharding.Strategy = "single"  # single process, ddp or fsdp (sharding.resolve)


class LoRAFinetuneRecipe:
    def __init__(
        self,
        config: TrainerConfig,
        reporter: ProgressReporter,
        stop: threading.Event,
        work_dir: Path,
        on_step: StepCallback | None = None,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.reporter = reporter
        self.stop = stop
        self.work_dir = work_dir
        self.on_step = on_step
        self.on_event = on_event or (lambda message: log.info("%s", message))
        self.storage = Storage(config.storage, config.runtime.cache_dir, config.runtime.cache_size_limit_bytes)
        self.timings: dict[str, float] = {}
        self.started = time.time()
        self.model: Any = None  # the trained PEFT model, kept for callers that use it in memory

    def run(self) -> RunSummary:
        done = export.existing_result(self.storage, self.config)
        if done is not None:
            self.on_event(f"{self.config.output.uri} already holds a finished run; nothing to do")
            return done
        session = self.setup()
        if session.resumed_from is None:
            session.state.baseline, _ = self.evaluate(session, "baseline")
        self.reporter.update(
            baseline_eval_loss=(session.state.baseline or {}).get("loss"), total_steps=session.inputs.plan.total_steps
        )
        self.train(session)
        finetuned, analysis = self.evaluate(session, "fine-tuned", analyse=True)
        self.reporter.update(eval_loss=finetuned.get("loss"))
        summary = self.export(session, {"baseline": session.state.baseline or {}, "finetuned": finetuned}, analysis)
        self.reporter.update(phase=TrainerPhase.DONE)
        return summary

    # -- the steps ---------------------------------------------------------------------------------

    def setup(self) -> Session:
        cfg = self.config
        device_type = "cuda" if cfg.runtime.device != "cpu" and torch.cuda.is_available() else "cpu"
        numerics = modeling.choose_numerics(cfg.training.precision, device_type)
        quantization.check(cfg.lora, device_type)  # QLoRA needs bitsandbytes; no 8-bit DoRA on CPU: before any download
        sharding.check(cfg.training, cfg.lora)
        # The process group first; the Accelerator once the strategy is known (it needs the model's size).
        processes = PartialState(cpu=device_type == "cpu")
        with self._phase(TrainerPhase.STAGING):
            self.storage.check_writable(cfg.output.uri)  # before any download: a wrong bucket fails first
        inputs = load_inputs(cfg, self.storage, device_type, processes.num_processes, phase=self._phase)
        report = inputs.data.quality
        for warning in report.warnings if report is not None else []:
            self.on_event(f"data-quality warning {warning.code}: {warning.message}")
        quality.enforce(report, cfg.preflight.fail_on_warnings)  # before the model is loaded
        strategy = self._strategy(inputs, processes.num_processes, device_type)
        accelerator = Accelerator(
            mixed_precision=numerics.mixed_precision,
            cpu=device_type == "cpu",
            fsdp_plugin=sharding.fsdp_plugin() if strategy == "fsdp" else None,
        )
        stats, plan = inputs.data.stats, inputs.plan
        self.on_event(
            f"staged model and data in {self.timings[TrainerPhase.STAGING]:.1f}s; "
            f"data: {stats.train_rows} train / {stats.validation_rows} validation rows ({stats.format}), "
            f"{stats.train_tokens} tokens, {stats.truncated_rows} truncated, {stats.dropped_rows} dropped"
        )

        set_seed(cfg.training.seed)
        with self._phase(TrainerPhase.LOADING):
            base = modeling.load_model(
                inputs.model_dir,
                numerics,
                cfg.training.gradient_checkpointing,
                device_type,
                quantize=cfg.lora.quantization,
                packed=cfg.training.packing,
            )
            if getattr(base, "hf_quantizer", None) is None and strategy != "fsdp":
                # The packing check runs where training will. Under FSDP a whole copy may not fit one
                # GPU: the check runs on the CPU copy, and prepare() moves each rank's shard.
                base.to(accelerator.device)
            inputs, model_report = self._check_packing(base, inputs, device_type, accelerator.num_processes)
            self.reporter.update(model=model_report)
            set_seed(cfg.training.seed)  # the check drew no random numbers from torch's stream, but be sure
            model = modeling.add_lora(base, cfg.lora)
            model_fingerprint = fingerprint_dir(inputs.model_dir)
            data_uris = [uri for uri in (cfg.dataset.train, cfg.dataset.validation) if uri]
            data_fingerprints = [self.storage.fingerprint(uri) for uri in data_uris]
        trainable, total = modeling.count_parameters(model)
        self.on_event(
            f"model: {total:,} parameters, {trainable:,} trainable (LoRA r={cfg.lora.r}); "
            f"{_precision_name(numerics)} on {device_type}, attention {model_report.attention}; "
            f"{plan.total_steps} steps ({plan.epochs} epochs x {plan.steps_per_epoch}), "
            f"batch {plan.batch_size} x accumulation {plan.gradient_accumulation_steps}"
            + (f"; {strategy} over {accelerator.num_processes} processes" if strategy != "single" else "")
        )

        optimizer = build_optimizer(model, cfg.training, device_type)
        scheduler = build_scheduler(optimizer, cfg.training, plan)
        prepared_model, optimizer = accelerator.prepare(model, optimizer)
        self.model = accelerator.unwrap_model(prepared_model)
        # From here each rank draws its own random numbers (dropout): the seed plus the rank. The
        # LoRA weights above were drawn from the shared seed, so every rank starts from the same ones.
        set_seed(cfg.training.seed, device_specific=True)
        checkpoints = CheckpointStore(self.storage, cfg.output.uri, cfg.training.keep_checkpoints)
        model_sha = model_fingerprint["sha256"]
        data_ids = [fp.get("sha256") or fp.get("etag", "") for fp in data_fingerprints]
        global_micro = plan.batch_size * accelerator.num_processes
        key = resume_key(cfg, model_sha, data_ids, rows_per_step=global_micro * plan.gradient_accumulation_steps)
        state = TrainState(resume_key=key, attempt=cfg.runtime.attempt, global_micro_batch=global_micro)
        latest = checkpoints.latest()
        if latest is not None:
            keys = (key, resume_key(cfg, model_sha, data_ids))  # the second: checkpoints of earlier releases
            state = checkpoints.load(
                latest, self.model, optimizer, scheduler, keys, accelerator.process_index, cfg.training.seed
            )
            state = rescale_position(state, global_micro)
            state.attempt, state.resume_key = cfg.runtime.attempt, key
            self.on_event(f"resumed from checkpoint step {latest} (epoch {state.epoch}, batch {state.micro_batch})")
        return Session(
            accelerator=accelerator,
            numerics=numerics,
            inputs=inputs,
            model=prepared_model,
            optimizer=optimizer,
            scheduler=scheduler,
            checkpoints=checkpoints,
            state=state,
            resumed_from=latest,
            model_fingerprint=model_fingerprint,
            data_fingerprints=data_fingerprints,
            model_report=model_report,
            strategy=strategy,
        )

    def _strategy(self, inputs: JobInputs, world_size: int, device_type: str) -> sharding.Strategy:
        """training.sharding for this run: auto compares the memory estimate of a full copy with the GPU."""
        training = self.config.training
        estimate, gpu_bytes = None, None
        if device_type == "cuda":
            gpu_bytes = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
            config = json.loads((inputs.model_dir / "config.json").read_text())
            if "hidden_size" in config and "intermediate_size" in config:
                estimate = estimate_memory(config, training, self.config.lora, inputs.plan.batch_size).total_bytes
        return sharding.resolve(training.sharding, world_size, estimate, gpu_bytes)

    def _check_packing(
        self, base: Any, inputs: JobInputs, device_type: str, world_size: int
    ) -> tuple[JobInputs, ModelReport]:
        """Keep packing only if this model keeps packed rows apart (packing_check); else pad.

        Every rank runs the same deterministic check, so all ranks agree without talking."""
        cfg = self.config
        arch = inputs.architecture
        report = ModelReport(
            model_type=arch.model_type,
            architecture=type(base).__name__,
            attention=modeling.attention_implementation(base),
            packing=PackingDecision(requested=cfg.training.packing, used=cfg.training.packing),
        )
        if not cfg.training.packing:
            return inputs, report
        try:
            check = check_packing(base, int(base.config.get_text_config().vocab_size), base.device, cfg.training.seed)
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            # The base model cannot run a forward pass of a few tokens in this transformers.
            raise UnsupportedModel(f"{report.architecture}: a forward pass fails: {type(exc).__name__}: {exc}") from exc
        if check.isolated:
            return inputs, report
        reason = f"{report.architecture}: {check.describe()}"
        self.on_event(f"Warning: packing turned off: {reason}")
        training = cfg.training.model_copy(update={"packing": False})
        data = inputs.data.without_packing(training.max_seq_length)
        plan = plan_steps(training, data.stats, device_type, world_size)
        report.packing = PackingDecision(requested=True, used=False, reason=reason)
        report.attention = modeling.unpacked_attention(base)
        return replace(inputs, data=data, plan=plan), report

    def train(self, session: Session) -> None:
        ctx = TrainContext(
            accelerator=session.accelerator,
            model=session.model,
            optimizer=session.optimizer,
            scheduler=session.scheduler,
            sequences=session.inputs.data.train,
            plan=session.inputs.plan,
            training=self.config.training,
            pad_id=int(session.inputs.tokenizer.pad_token_id),
            checkpoints=session.checkpoints,
            reporter=self.reporter,
            stop=self.stop,
            on_step=self.on_step,
        )
        started = time.perf_counter()
        session.state = train(ctx, session.state)
        self.timings["Training"] = round(time.perf_counter() - started, 3)

    def evaluate(
        self, session: Session, label: str, analyse: bool = False
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Loss and perplexity (and the generation metrics, when asked) on the validation rows; {}
        without them. With `analyse`, also the error analysis (eval_report) of this model.

        The full result, generated examples included, is what eval.json and the model card show.
        """
        with self._phase(TrainerPhase.EVALUATING):
            result, analysis = self._evaluate_on_validation_rows(session, analyse)
        self.on_event(f"{label}: {_describe(result)}")
        return result, analysis

    def _evaluate_on_validation_rows(
        self, session: Session, analyse: bool
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        data, tokenizer, accelerator = session.inputs.data, session.inputs.tokenizer, session.accelerator
        if not data.validation:
            return {}, None
        evaluation = self.config.evaluation
        answers: list[Answer] = []
        accepted: list[bool] = []
        with accelerator.autocast():
            pad_id = int(tokenizer.pad_token_id)
            losses = eval_loss(session.model, data.validation, EVAL_BATCH_SIZE, pad_id, accelerator.device)
            result: dict[str, Any] = losses.summary()
            if evaluation.exact_match:
                answers = generate_answers(
                    accelerator.unwrap_model(session.model),
                    tokenizer,
                    session.inputs.encoder,
                    data.validation_rows,
                    evaluation.max_samples,
                    evaluation.max_new_tokens,
                    accelerator.device,
                )
                scores, accepted = score_answers(answers, evaluation)
                result |= scores
        if not analyse:
            return result, None
        analysis = error_analysis(
            data.validation_rows, losses.row_loss_sums, losses.row_tokens, answers, accepted, evaluation
        )
        return result, analysis

    def export(
        self, session: Session, evals: dict[str, dict[str, Any]], analysis: dict[str, Any] | None = None
    ) -> RunSummary:
        """Publish the artifacts (rank 0 only) and say how the run ended. The adapter is published
        whether or not it passes the evaluation gate: the verdict travels with it."""
        cfg, state, accelerator = self.config, session.state, session.accelerator
        evaluations = Evaluations(
            baseline=EvalResult.model_validate(evals["baseline"]),
            finetuned=EvalResult.model_validate(evals["finetuned"]),
        )
        gate = judge_gate(cfg.evaluation.gate, evaluations) if cfg.evaluation.gate is not None else None
        if gate is not None:
            verdict = "passed" if gate.passed else "Warning: failed"
            self.on_event(f"evaluation gate {verdict} ({gate.reason}): {gate.message}")
        reports: dict[str, dict[str, Any]] = dict(evals)
        if gate is not None:
            reports["gate"] = gate.model_dump(mode="json", by_alias=False, exclude_none=True)
        if analysis is not None:
            reports["error_analysis"] = analysis
        summary = RunSummary(
            status=RunStatus.SUCCEEDED,
            job=cfg.job_name,
            step=state.step,
            total_steps=session.inputs.plan.total_steps,
            trained_tokens=state.trained_tokens,
            train_loss=state.loss_history[-1]["loss"] if state.loss_history else None,
            eval=evaluations,
            gate=gate,
            model=session.model_report,
            checkpoints=self.reporter.report.checkpoints,
        )
        # A collective under FSDP: every rank gathers the adapter, rank 0 writes it.
        adapter = sharding.trainable_state(accelerator.unwrap_model(session.model))
        if accelerator.is_main_process:
            with self._phase(TrainerPhase.EXPORTING):
                out = self.work_dir / "export"
                self._save_model(out, session, adapter)
                serving = export.check_serving(out, cfg, session.model_report.model_type)
                export.write_reports(out, cfg, state, session.inputs.data.stats, reports, serving=serving)
                manifest = export.build_manifest(
                    cfg,
                    state=state,
                    plan=session.inputs.plan,
                    numerics=session.numerics,
                    model_report=session.model_report,
                    device=accelerator.device.type,
                    processes=accelerator.num_processes,
                    sharding=session.strategy,
                    model_fingerprint=session.model_fingerprint,
                    data_fingerprints=session.data_fingerprints,
                    stats=session.inputs.data.stats,
                    evaluations=evaluations,
                    timings=self.timings,
                    gate=gate,
                    serving=serving,
                )
                published = export.publish(self.storage, out, cfg.output.uri, manifest)
            summary.adapter_uri, summary.manifest_uri = published.adapter_uri, published.manifest_uri
        accelerator.wait_for_everyone()
        summary.duration_seconds = round(time.time() - self.started, 2)
        return summary

    # -- helpers -----------------------------------------------------------------------------------

    def _save_model(self, out: Path, session: Session, adapter: dict[str, torch.Tensor]) -> None:
        """The adapter (gathered whole: `adapter`) and tokenizer, and, when asked, merged full
        weights, into `out`."""
        out.mkdir(parents=True, exist_ok=True)
        peft_model = session.accelerator.unwrap_model(session.model)
        tokenizer = session.inputs.tokenizer
        peft_model.save_pretrained(str(out), safe_serialization=True, state_dict=adapter)
        tokenizer.padding_side = "right"
        tokenizer.save_pretrained(str(out))
        if self.config.output.merge_adapter:
            # A sharded model cannot merge in place: like a quantised one, the staged base is loaded
            # again and the saved adapter merged into it.
            if self.config.lora.quantization is Quantization.NONE and session.strategy != "fsdp":
                merged = peft_model.merge_and_unload()
                merged.save_pretrained(str(out / "merged"), safe_serialization=True)
            else:  # into the staged full-precision base (not its 4/8-bit rounding, not a shard)
                quantization.merge_unquantized(session.inputs.model_dir, out, out / "merged")
            tokenizer.save_pretrained(str(out / "merged"))

    @contextmanager
    def _phase(self, phase: TrainerPhase) -> Iterator[None]:
        """Report the phase and add its wall time to the manifest's timings."""
        self.reporter.update(phase=phase)
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[phase] = round(self.timings.get(phase, 0.0) + time.perf_counter() - started, 3)


def _precision_name(numerics: modeling.Numerics) -> str:
    return "fp32" if numerics.mixed_precision == "no" else numerics.mixed_precision


def _describe(result: dict[str, Any]) -> str:
    if not result:
        return "no validation rows"
    parts = [f"eval loss {result['loss']:.4f}", f"perplexity {result['perplexity']:.2f}"]
    if result.get("scores"):
        metric = result["metric"]
        parts.append(f"{metric.replace('_', ' ')} {result['scores'][metric]:.1%} of {result['samples']}")
    return ", ".join(parts)
