"""A job's inputs, staged and prepared: stage -> tokenize -> prepare -> plan, written once.

Both callers go through `load_inputs`, so what validation reports is what training does:

    validate.validate_job      the CPU check: stages only tokenizer and config files (no weights)
    recipe.LoRAFinetuneRecipe  training: stages the whole model directory
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune_api.protocol import StepPlan, TrainerPhase
from kubetune_api.trainer_config import TrainerConfig
from kubetune_trainer.architectures import Architecture, classify
from kubetune_trainer.encode import Encoder
from kubetune_trainer.eval_report import check_group_by
from kubetune_trainer.modeling import check_seq_length, load_tokenizer, model_max_length
from kubetune_trainer.prepare import PreparedData, plan_steps, prepare
from kubetune_trainer.storage import Storage

PhaseTimer = Callable[[TrainerPhase], AbstractContextManager[None]]


@dataclass
class JobInputs:
    model_dir: Path
    architecture: Architecture
    tokenizer: Any  # a transformers fast tokenizer
    encoder: Encoder
    data: PreparedData
    plan: StepPlan


def _untimed(phase: TrainerPhase) -> AbstractContextManager[None]:
    return contextlib.nullcontext()


def load_inputs(
    config: TrainerConfig,
    storage: Storage,
    device_type: str,
    world_size: int,
    model_files: frozenset[str] | None = None,
    phase: PhaseTimer = _untimed,
) -> JobInputs:
    """Stage the model (only `model_files`, when given) and the data, encode the rows, plan the steps.

    `device_type` and `world_size` are where training runs, which is not where a preflight
    runs: `batchSize: auto` and the step count depend on them.
    """
    with phase(TrainerPhase.STAGING):
        model_dir = storage.stage_dir(config.base_model_uri, only=model_files)
        architecture = classify(model_dir)  # a model kubetune cannot train stops here, before any GPU
        check_seq_length(model_dir, config.training.max_seq_length)
        train_path = storage.stage_file(config.dataset.train)
        validation_path = storage.stage_file(config.dataset.validation) if config.dataset.validation else None
    with phase(TrainerPhase.PREPARING):
        tokenizer = load_tokenizer(model_dir)
        encoder = Encoder(tokenizer, config.training.max_seq_length, config.training.completion_only_loss)
        data = prepare(
            config.dataset, config.training, encoder, train_path, validation_path, model_max_length(model_dir)
        )
        validation_name = config.dataset.validation or f"the validation split of {config.dataset.train}"
        check_group_by(data.validation_rows, config.evaluation.group_by, validation_name)
    plan = plan_steps(config.training, data.stats, device_type, world_size)
    return JobInputs(model_dir, architecture, tokenizer, encoder, data, plan)
