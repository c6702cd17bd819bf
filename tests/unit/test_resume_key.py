"""The resume key: what must match for a checkpoint to be resumed, stable across upgrades."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from conftest import trainer_config
from kubetune_api.trainer_config import TrainerConfig
from kubetune_trainer.checkpoint import resume_key


def config(tmp_path: Path, **lora: object) -> TrainerConfig:
    raw = trainer_config("m", "t.jsonl", "out", cache_dir=tmp_path)
    raw["lora"].update(lora)
    return TrainerConfig.model_validate(raw)


def key_before_qlora(cfg: TrainerConfig, model: str, data: list[str]) -> str:
    """The key as the release before quantization/DoRA/rsLoRA computed it."""
    exclude = {"checkpoint_every_steps", "keep_checkpoints", "log_every_steps"}
    exclude.add("sharding")  # a field that release did not have
    payload = {
        "model": model,
        "data": data,
        "lora": cfg.lora.model_dump(exclude={"quantization", "use_dora", "use_rslora"}),
        "training": cfg.training.model_dump(exclude=exclude),
        "dataset": cfg.dataset.model_dump(exclude={"train", "validation"}),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


def test_a_checkpoint_of_the_previous_release_still_resumes(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    assert resume_key(cfg, "sha", ["d"]) == key_before_qlora(cfg, "sha", ["d"])


def test_the_new_lora_settings_change_the_key_when_set(tmp_path: Path) -> None:
    plain = resume_key(config(tmp_path), "sha", ["d"])
    keys = {
        resume_key(config(tmp_path, quantization="4bit"), "sha", ["d"]),
        resume_key(config(tmp_path, use_dora=True), "sha", ["d"]),
        resume_key(config(tmp_path, use_rslora=True), "sha", ["d"]),
    }
    assert plain not in keys and len(keys) == 3


def test_the_sharding_strategy_does_not_change_the_key(tmp_path: Path) -> None:
    """Checkpoints hold full state: a run may resume under another strategy (and world size)."""
    raw = trainer_config("m", "t.jsonl", "out", cache_dir=tmp_path, training={"sharding": "fsdp"})
    assert resume_key(TrainerConfig.model_validate(raw), "sha", ["d"]) == resume_key(config(tmp_path), "sha", ["d"])
