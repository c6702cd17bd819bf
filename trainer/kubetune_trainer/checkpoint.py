"""Resumable checkpoints under `<output>/checkpoints/step-NNNNNNNN/`.

A checkpoint holds the adapter, optimizer, scheduler, each rank's RNG state and the data position.
It counts only once it is marked complete (the `COMPLETE` marker of storage.py, written
last), so a kill at any moment leaves either a complete checkpoint or one that resume ignores. Old complete
checkpoints beyond `keep` are deleted only after a newer one is complete.
"""

from __future__ import annotations

import hashlib
import io
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
from safetensors.torch import load_file, save_file

from kubetune_api.trainer_config import TrainerConfig
from kubetune_trainer import sharding
from kubetune_trainer.errors import InvalidSpec
from kubetune_trainer.storage import Location, Storage, parse_uri

log = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step-(\d{8})$")
# Full, name-keyed state (sharding.py), whatever the strategy and world size that wrote it:
# trainable.safetensors holds every trainable parameter whole, optimizer.pt the full optimizer
# state dict keyed by parameter name.
TRAINABLE = "trainable.safetensors"
FILES = (TRAINABLE, "optimizer.pt", "scheduler.pt", "state.json")
# Before sharding: the adapter as PEFT saves it and the optimizer's own (index-keyed) state dict.
LEGACY_FILES = ("adapter_model.safetensors", "adapter_config.json", "optimizer.pt", "scheduler.pt", "state.json")
# Each rank's RNG state, so that after a resume every rank continues its own random stream
# (dropout masks) instead of all taking rank 0's: rng/rank-00000.pt, rng/rank-00001.pt, ...
RNG_DIR = "rng"
LEGACY_RNG = "rng.pt"  # before per-rank states: rank 0's only, at the checkpoint's top level


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
    global_micro_batch: int = 0  # sequences per micro-batch over all ranks (0: a checkpoint from before)


# LoRA fields added after a release: left out of the key while they hold their default, so a
# checkpoint written by that release (whose key never had them) still resumes after an upgrade.
LORA_FIELDS_ADDED_LATER = ("quantization", "use_dora", "use_rslora")


def resume_key(
    config: TrainerConfig, model_fingerprint: str, data_fingerprints: list[str], rows_per_step: int | None = None
) -> str:
    """What must match for a checkpoint to be resumable: data, model and the training maths.

    `rows_per_step` (sequences per optimizer step over all ranks): the key then holds that instead
    of the per-rank batchSize and gradientAccumulationSteps, so a run resumes on another number of
    ranks as long as each optimizer step sees the same sequences. Without it: the key of releases
    before per-rank-independent checkpoints, still accepted on load."""
    # sharding is left out: checkpoints hold full (unsharded) state, so a run may resume under
    # another strategy (and checkpoints from before the field still match).
    exclude = {"checkpoint_every_steps", "keep_checkpoints", "log_every_steps", "sharding"}
    if rows_per_step is not None:
        exclude |= {"batch_size", "gradient_accumulation_steps"}
    training = config.training.model_dump(exclude=exclude)
    if rows_per_step is not None:
        training["rows_per_step"] = rows_per_step
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


def rescale_position(state: TrainState, global_micro_batch: int) -> TrainState:
    """The next micro-batch index for a run whose micro-batches (over all ranks) hold
    `global_micro_batch` sequences, from a checkpoint written with another size: the same
    sequences done, counted in the new size (a checkpoint is at a step boundary, so it divides)."""
    if state.global_micro_batch and state.global_micro_batch != global_micro_batch:
        done = state.micro_batch * state.global_micro_batch
        state.micro_batch = -(-done // global_micro_batch)
    state.global_micro_batch = global_micro_batch
    return state


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


def rng_file(rank: int) -> str:
    return f"rank-{rank:05d}.pt"


def seed_new_rank(seed: int, step: int, rank: int) -> None:
    """A stream for a rank the checkpoint has no state for (resumed on more processes than it was
    saved by): derived from (seed, step, rank), so it is reproducible and differs from every other."""
    derived = int.from_bytes(hashlib.sha256(f"{seed}/{step}/{rank}".encode()).digest()[:4], "big")
    random.seed(derived)
    torch.manual_seed(derived)


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

    def save_rng(self, step: int, rank: int) -> None:
        """This rank's RNG state. Every rank calls it, and all of them before rank 0's `save`,
        whose marker makes the checkpoint count."""
        buffer = io.BytesIO()
        torch.save(rng_state(), buffer)
        self.storage.put_bytes(buffer.getvalue(), self.root.join(step_name(step), RNG_DIR, rng_file(rank)).uri)

    def save(
        self,
        trainable: dict[str, torch.Tensor],
        optimizer_state: dict[str, Any],
        scheduler: Any,
        state: TrainState,
    ) -> str:
        """Write locally, upload every file, then the marker. Returns the checkpoint URI.
        Rank 0 only, after every rank's `save_rng` for this step; `trainable` and `optimizer_state`
        are the full state every rank gathered (sharding.trainable_state / optimizer_state)."""
        target = self.root.join(step_name(state.step))
        with tempfile.TemporaryDirectory(prefix="kubetune-ckpt-") as tmp:
            local = Path(tmp)
            save_file(trainable, str(local / TRAINABLE))
            torch.save(optimizer_state, local / "optimizer.pt")
            torch.save(scheduler.state_dict(), local / "scheduler.pt")
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
        resume_keys: tuple[str, ...],
        rank: int = 0,
        seed: int = 0,
    ) -> TrainState:
        """The state of checkpoint `step`, into the model, optimizer and scheduler given, and this
        rank's RNG state (see restore_rng)."""
        source = self.root.join(step_name(step))
        legacy = TRAINABLE not in self.storage.list_children(source.uri)
        local = {name: self.storage.stage_file(source.join(name).uri) for name in (LEGACY_FILES if legacy else FILES)}
        state = TrainState(**json.loads(local["state.json"].read_text()))
        if state.resume_key not in resume_keys:
            raise InvalidSpec(
                f"{source.uri}: this checkpoint was made from a different dataset, model or training "
                "config; use a new output.uri, or delete the old checkpoints to start over"
            )
        if legacy:  # written by one process or DDP before checkpoints held full, name-keyed state
            set_peft_model_state_dict(model, load_file(str(local["adapter_model.safetensors"])))
            optimizer.load_state_dict(torch.load(local["optimizer.pt"], weights_only=True))
        else:
            try:
                sharding.load_trainable_state(model, load_file(str(local[TRAINABLE])))
            except KeyError as exc:  # the resume key matched, so the checkpoint itself is damaged
                raise InvalidSpec(
                    f"{source.uri}: {exc.args[0]}; delete the damaged checkpoint (or use a new output.uri)"
                ) from exc
            sharding.load_optimizer_state(model, optimizer, torch.load(local["optimizer.pt"], weights_only=True))
        scheduler.load_state_dict(torch.load(local["scheduler.pt"], weights_only=True))
        self.restore_rng(step, rank, seed)
        return state

    def restore_rng(self, step: int, rank: int, seed: int) -> str:
        """This rank's own saved stream; rank 0 of a checkpoint from before per-rank states gets the
        one state it had; a rank the checkpoint never had gets a fresh stream (seed_new_rank).
        Returns which of the three happened."""
        source = self.root.join(step_name(step))
        if rng_file(rank) in self.storage.list_children(source.join(RNG_DIR).uri):
            uri, how = source.join(RNG_DIR, rng_file(rank)).uri, "own"
        elif rank == 0 and LEGACY_RNG in self.storage.list_children(source.uri):
            uri, how = source.join(LEGACY_RNG).uri, "legacy"
        else:
            log.warning("checkpoint step %d has no RNG state for rank %d: a new stream for it", step, rank)
            seed_new_rank(seed, step, rank)
            return "new"
        # weights_only=False: the Python RNG state is a tuple torch's safe loader refuses; the file is
        # this job's own checkpoint, in its own output location.
        set_rng_state(torch.load(self.storage.stage_file(uri), weights_only=False))
        return how
