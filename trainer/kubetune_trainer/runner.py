"""The stages of a run, in order. Imports torch; `pipeline.run_training` is the way in."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from kubetune_api.trainer_config import TrainerConfig
from kubetune_trainer import export, modeling
from kubetune_trainer.checkpoint import CheckpointStore, TrainState
from kubetune_trainer.encode import Encoder
from kubetune_trainer.evaluate import eval_loss, exact_match
from kubetune_trainer.pipeline import Summary, existing_result, fingerprint_dir, resume_key
from kubetune_trainer.prepare import PreparedData, plan, prepare
from kubetune_trainer.progress import ProgressReporter
from kubetune_trainer.storage import Storage
from kubetune_trainer.train import TrainContext, build_optimizer, build_scheduler, train

log = logging.getLogger(__name__)


class Runner:
    def __init__(
        self,
        config: TrainerConfig,
        reporter: ProgressReporter,
        stop: threading.Event,
        work_dir: Path,
        on_step: Callable[..., None] | None = None,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.reporter = reporter
        self.stop = stop
        self.work_dir = work_dir
        self.on_step = on_step
        self.on_event = on_event or (lambda message: log.info("%s", message))
        self.storage = Storage(config.storage, config.runtime.cache_dir)
        self.timings: dict[str, float] = {}
        self.started = time.time()
        self.model: Any = None  # the trained PEFT model, kept for callers that use it in memory

    def _stage(self, name: str) -> _Timer:
        self.reporter.update(phase=name)
        return _Timer(self.timings, name)

    def run(self) -> Summary:
        cfg = self.config
        done = existing_result(self.storage, cfg)
        if done is not None:
            self.on_event(f"{cfg.output.uri} already holds a finished run; nothing to do")
            return done

        with self._stage("Staging"):
            self.storage.check_writable(cfg.output.uri)
            model_dir = self.storage.stage_dir(cfg.base_model_uri)
            train_path = self.storage.stage_file(cfg.dataset.train)
            val_path = self.storage.stage_file(cfg.dataset.validation) if cfg.dataset.validation else None
            modeling.check_seq_length(model_dir, cfg.training.max_seq_length)
        self.on_event(f"staged model and data in {self.timings['Staging']:.1f}s")

        with self._stage("Preparing"):
            tokenizer = modeling.load_tokenizer(model_dir)
            encoder = Encoder(tokenizer, cfg.training.max_seq_length, cfg.training.completion_only_loss)
            data = prepare(cfg.dataset, cfg.training, encoder, train_path, val_path)
        stats = data.stats
        self.on_event(
            f"data: {stats.train_rows} train / {stats.validation_rows} validation rows ({stats.format}), "
            f"{stats.train_tokens} tokens, {stats.truncated_rows} truncated, {stats.dropped_rows} dropped"
        )

        accelerator = self._accelerator()
        device = accelerator.device
        the_plan = plan(cfg.training, stats, device.type, accelerator.num_processes)
        set_seed(cfg.training.seed)
        numerics = modeling.choose_numerics(cfg.training.precision, device.type)
        with self._stage("Loading"):
            base = modeling.load_model(model_dir, numerics, cfg.training.gradient_checkpointing)
            model = modeling.add_lora(base, cfg.lora)
            model_fp = fingerprint_dir(model_dir)
            data_fps = [self.storage.fingerprint(u) for u in filter(None, [cfg.dataset.train, cfg.dataset.validation])]
        trainable, total = modeling.count_parameters(model)
        self.on_event(
            f"model: {total:,} parameters, {trainable:,} trainable (LoRA r={cfg.lora.r}); "
            f"{_precision_name(numerics)} on {device.type}, attention {numerics.attn_implementation}; "
            f"{the_plan.total_steps} steps ({the_plan.epochs} epochs x {the_plan.steps_per_epoch}), "
            f"batch {the_plan.batch_size} x accumulation {the_plan.gradient_accumulation_steps}"
        )

        optimizer = build_optimizer(model, cfg.training, device.type)
        scheduler = build_scheduler(optimizer, cfg.training, the_plan)
        model, optimizer = accelerator.prepare(model, optimizer)
        self.model = accelerator.unwrap_model(model)
        checkpoints = CheckpointStore(self.storage, cfg.output.uri, cfg.training.keep_checkpoints)
        key = resume_key(cfg, model_fp["sha256"], [fp.get("sha256") or fp.get("etag", "") for fp in data_fps])
        state = TrainState(resume_key=key, attempt=cfg.runtime.attempt)

        latest = checkpoints.latest()
        if latest is not None:
            state = checkpoints.load(latest, accelerator.unwrap_model(model), optimizer, scheduler, key)
            state.attempt = cfg.runtime.attempt
            self.on_event(f"resumed from checkpoint step {latest} (epoch {state.epoch}, batch {state.micro_batch})")
        else:
            with self._stage("Evaluating"):
                state.baseline = self._evaluate(model, tokenizer, encoder, data, accelerator)
            self.on_event(f"baseline: {_describe(state.baseline)}")
        self.reporter.update(baseline_eval_loss=(state.baseline or {}).get("loss"), total_steps=the_plan.total_steps)

        ctx = TrainContext(
            accelerator=accelerator,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            sequences=data.train,
            plan=the_plan,
            training=cfg.training,
            pad_id=int(tokenizer.pad_token_id),
            checkpoints=checkpoints,
            reporter=self.reporter,
            stop=self.stop,
            on_step=self.on_step,
        )
        train_started = time.perf_counter()
        state = train(ctx, state)
        self.timings["Training"] = round(time.perf_counter() - train_started, 3)

        with self._stage("Evaluating"):
            finetuned = self._evaluate(model, tokenizer, encoder, data, accelerator)
        self.reporter.update(eval_loss=finetuned.get("loss"))
        self.on_event(f"fine-tuned: {_describe(finetuned)}")
        evals = {"baseline": state.baseline or {}, "finetuned": finetuned}

        summary = Summary(
            status="Succeeded",
            job=cfg.job_name,
            step=state.step,
            total_steps=the_plan.total_steps,
            trained_tokens=state.trained_tokens,
            train_loss=state.loss_history[-1]["loss"] if state.loss_history else None,
            eval=evals,
        )
        if accelerator.is_main_process:
            with self._stage("Exporting"):
                result = self._export(
                    model,
                    tokenizer,
                    accelerator,
                    state,
                    evals,
                    stats.as_dict(),
                    the_plan,
                    model_fp,
                    data_fps,
                    numerics,
                )
            summary.adapter_uri, summary.manifest_uri = result.adapter_uri, result.manifest_uri
        accelerator.wait_for_everyone()
        summary.duration_seconds = round(time.time() - self.started, 2)
        self.reporter.update(phase="Done")
        return summary

    def _accelerator(self) -> Accelerator:
        device = self.config.runtime.device
        numerics = modeling.choose_numerics(
            self.config.training.precision, "cuda" if device != "cpu" and torch.cuda.is_available() else "cpu"
        )
        return Accelerator(mixed_precision=numerics.mixed_precision, cpu=device == "cpu")

    def _evaluate(
        self, model: Any, tokenizer: Any, encoder: Encoder, data: PreparedData, accelerator: Accelerator
    ) -> dict[str, Any]:
        if not data.validation:
            return {}
        batch = 8
        with accelerator.autocast():
            result: dict[str, Any] = eval_loss(
                model, data.validation, batch, int(tokenizer.pad_token_id), accelerator.device
            )
            if self.config.evaluation.exact_match:
                generated = exact_match(
                    accelerator.unwrap_model(model),
                    tokenizer,
                    encoder,
                    data.validation_rows,
                    self.config.evaluation.max_samples,
                    self.config.evaluation.max_new_tokens,
                    accelerator.device,
                )
                result.update(generated)
        return result

    def _export(
        self,
        model: Any,
        tokenizer: Any,
        accelerator: Accelerator,
        state: TrainState,
        evals: dict[str, Any],
        stats: dict[str, Any],
        the_plan: Any,
        model_fp: dict[str, Any],
        data_fps: list[dict[str, Any]],
        numerics: modeling.Numerics,
    ) -> export.ExportResult:
        cfg = self.config
        out = self.work_dir / "export"
        out.mkdir(parents=True, exist_ok=True)
        peft_model = accelerator.unwrap_model(model)
        peft_model.save_pretrained(str(out), safe_serialization=True)
        tokenizer.padding_side = "right"
        tokenizer.save_pretrained(str(out))
        (out / "metrics.json").write_text(json.dumps({"loss_curve": state.loss_history, "data": stats}, indent=1))
        (out / "eval.json").write_text(json.dumps(evals, indent=2))
        export.write_loss_curve(state.loss_history, evals, out / "loss_curve.png")
        (out / "README.md").write_text(
            export.model_card(cfg.job_name, cfg.base_model_uri, cfg.dataset.train, cfg.lora.model_dump(), evals)
        )
        if cfg.output.merge_adapter:
            merged = peft_model.merge_and_unload()
            merged.save_pretrained(str(out / "merged"), safe_serialization=True)
            tokenizer.save_pretrained(str(out / "merged"))
        manifest = {
            "kind": "kubetune.io/FineTuneJobResult",
            "job": {"name": cfg.job_name, "namespace": cfg.namespace, "attempt": state.attempt},
            "baseModel": {
                "uri": cfg.base_model_uri,
                "sha256": model_fp["sha256"],
                "files": model_fp["files"],
            },
            "datasets": data_fps,
            "config": json.loads(cfg.model_dump_json(exclude={"runtime"})),
            "training": {
                "steps": state.step,
                "epochs": the_plan.epochs,
                "batchSize": the_plan.batch_size,
                "trainedTokens": state.trained_tokens,
                "precision": numerics.mixed_precision,
                "attention": numerics.attn_implementation,
                "device": accelerator.device.type,
                "processes": accelerator.num_processes,
            },
            "data": stats,
            "eval": {k: {m: v for m, v in d.items() if m != "examples"} for k, d in evals.items()},
            "timingsSeconds": {**self.timings, "trainingTotal": round(state.elapsed_seconds, 3)},
            "libraries": export.library_versions(),
        }
        return export.publish(self.storage, out, cfg.output.uri, manifest)


def _precision_name(numerics: modeling.Numerics) -> str:
    return "fp32" if numerics.mixed_precision == "no" else numerics.mixed_precision


def _describe(result: dict[str, Any]) -> str:
    if not result:
        return "no validation rows"
    parts = [f"eval loss {result['loss']:.4f}", f"perplexity {result['perplexity']:.2f}"]
    if result.get("exact_match") is not None:
        parts.append(f"exact match {result['exact_match']:.1%} of {result['samples']}")
    return ", ".join(parts)


class _Timer:
    def __init__(self, timings: dict[str, float], name: str) -> None:
        self.timings, self.name = timings, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timings[self.name] = round(self.timings.get(self.name, 0.0) + time.perf_counter() - self.start, 3)
