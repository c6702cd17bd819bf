"""Resumable checkpoints under `<output>/checkpoints/step-NNNNNNNN/`.

A checkpoint holds the adapter, optimizer, scheduler, RNG states and the data position.
It counts only once it is marked complete (the `COMPLETE` marker of storage.py, written
last), so a kill at any moment leaves either a complete checkpoint or one that resume ignores. Old complete
checkpoints beyond `keep` are deleted only after a newer one is complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file

from kubetune_api.trainer_config import TrainerConfig
from kubetune_trainer.errors import InvalidSpec
from kubetune_trainer.storage import Location, Storage, parse_uri

log = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step-(\d{8})$")
FILES = (
    "adapter_model.safetensors",
    "adapter_config.json",
    "optimizer.pt",
    "scheduler.pt",
    "rng.pt",
    "state.json",
)


@dataclass
class TrainState:
    """Everything besides tensors that a resumed run needs to continue exactly."""

    step: int = 0
    epoch: int = 0
    micro_batch: int = 0  # next micro-batch index within `epoch`
    trained_tokens: int = 0
    elapsed_seconds: float = 0.0
    loss_history: list[dict[str, float]] = field(default_factory=list)
    baseline: dict[str, Any] | None = None
    resume_key: str = ""
    attempt: int = 1


# LoRA fields added after a release: left out of the key while they hold their default, so a
# checkpoint written by that release (whose key never had them) still resumes after an upgrade.
LORA_FIELDS_ADDED_LATER = ("quantization", "use_dora", "use_rslora")


def resume_key(config: TrainerConfig, model_fingerprint: str, data_fingerprints: list[str]) -> str:
    """What must match for a checkpoint to be resumable: data, model and the training maths."""
    training = config.training.model_dump(exclude={"checkpoint_every_steps", "keep_checkpoints", "log_every_steps"})
    lora_defaults = {
        name
        for name in LORA_FIELDS_ADDED_LATER
        if getattr(config.lora, name) == type(config.lora).model_fields[name].default
    }
    payload = {
        "model": model_fingerprint,
        "data": data_fingerprints,
        "lora": config.lora.model_dump(exclude=lora_defaults),
        "training": training,
        "dataset": config.dataset.model_dump(exclude={"train", "validation"}),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointStore:
    def __init__(self, storage: Storage, output_uri: str, keep: int) -> None:
        self.storage = storage
        self.root: Location = parse_uri(output_uri).join("checkpoints")
        self.keep = keep

    def complete_steps(self) -> list[int]:
        steps = []
        for name in self.storage.list_children(self.root.uri):
            match = STEP_DIR.match(name)
            if match and self.storage.is_complete(self.root.join(name).uri):
                steps.append(int(match.group(1)))
        return sorted(steps)

    def save(
        self,
        model: PeftModel,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        state: TrainState,
    ) -> str:
        """Write locally, upload every file, then the marker. Returns the checkpoint URI."""
        target = self.root.join(step_name(state.step))
        with tempfile.TemporaryDirectory(prefix="kubetune-ckpt-") as tmp:
            local = Path(tmp)
            model.save_pretrained(str(local), safe_serialization=True)
            torch.save(optimizer.state_dict(), local / "optimizer.pt")
            torch.save(scheduler.state_dict(), local / "scheduler.pt")
            torch.save(rng_state(), local / "rng.pt")
            (local / "state.json").write_text(json.dumps(asdict(state)))
            files = self.storage.put_dir(local, target.uri)
        self.storage.mark_complete(target.uri, {"step": state.step, "files": files, "time": time.time()})
        self._prune()
        return target.uri

    def _prune(self) -> None:
        steps = self.complete_steps()
        for step in steps[: max(0, len(steps) - self.keep)]:
            self.storage.delete_prefix(self.root.join(step_name(step)).uri)

    def latest(self) -> int | None:
        steps = self.complete_steps()
        return steps[-1] if steps else None

    def load(
        self,
        step: int,
        model: PeftModel,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        resume_key: str,
    ) -> TrainState:
        source = self.root.join(step_name(step))
        local = {name: self.storage.stage_file(source.join(name).uri) for name in FILES}
        state = TrainState(**json.loads(local["state.json"].read_text()))
        if state.resume_key != resume_key:
            raise InvalidSpec(
                f"{source.uri}: this checkpoint was made from a different dataset, model or training "
                "config; use a new output.uri, or delete the old checkpoints to start over"
            )
        set_peft_model_state_dict(model, load_file(str(local["adapter_model.safetensors"])))
        optimizer.load_state_dict(torch.load(local["optimizer.pt"], weights_only=True))
        scheduler.load_state_dict(torch.load(local["scheduler.pt"], weights_only=True))
        set_rng_state(torch.load(local["rng.pt"], weights_only=False))
        return state
