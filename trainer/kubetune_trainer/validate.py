"""Everything that can be known about a job without a GPU or the model weights.

`kubetune-train --validate-only` (the operator's CPU preflight Job) and `kubetune validate`
run this: stage only the tokenizer and config files, validate every row, count tokens,
truncation and packing, plan the steps and, when planning for a GPU, estimate its memory.
The result is a `kubetune_api.protocol.PreflightReport`.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from kubetune_api.gpus import GpuType, gpu_type_from_node_selector
from kubetune_api.protocol import ModelReport, PreflightReport
from kubetune_api.trainer_config import TrainerConfig
from kubetune_trainer import architectures, quantization, sharding
from kubetune_trainer.errors import ModelInvalid
from kubetune_trainer.inputs import load_inputs
from kubetune_trainer.memory import estimate_memory
from kubetune_trainer.modeling import TOKENIZER_FILES
from kubetune_trainer.planner import plan_fit
from kubetune_trainer.storage import Storage, parse_uri


def validate_job(
    config: TrainerConfig, plan_device: str | None = None, world_size: int = 1, gpu_type: GpuType | None = None
) -> PreflightReport:
    """Row checks, tokens, steps, memory and the fit plan for the job as it will train.

    `plan_device` is where training will run (the preflight itself runs on a CPU node), so
    `batchSize: auto` and the step count match the real run. `gpu_type`: the GPUs to plan for;
    by default the type the job's node selector names (planner.plan_fit; unknown: no verdict).
    """
    device = plan_device or ("cuda" if config.runtime.device == "cuda" else "cpu")
    quantization.check(config.lora, device)  # no bitsandbytes, or DoRA on 8 bits on CPU: before staging anything
    sharding.check(config.training, config.lora)
    storage = Storage(config.storage, config.runtime.cache_dir, config.runtime.cache_size_limit_bytes)
    inputs = load_inputs(config, storage, device, world_size, model_files=frozenset(TOKENIZER_FILES))
    model_config = json.loads((inputs.model_dir / "config.json").read_text())
    memory, fit = None, None
    if device == "cuda" and "hidden_size" in model_config:
        memory = estimate_memory(model_config, config.training, config.lora, inputs.plan.batch_size)
        gpu = gpu_type if gpu_type is not None else gpu_type_from_node_selector(config.resources.node_selector)
        fit = plan_fit(model_config, config.training, config.lora, inputs.plan, inputs.data.stats, world_size, gpu)
    check_weights(config.base_model_uri, inputs.model_dir, storage)
    arch = inputs.architecture
    model = ModelReport(model_type=arch.model_type, architecture=arch.class_name)
    return PreflightReport(
        job=config.job_name,
        data=inputs.data.stats,
        plan=inputs.plan,
        memory=memory,
        model=model,
        fit=fit,
        quality=inputs.data.quality,
    )


def check_weights(model_uri: str, config_dir: Path, storage: Storage) -> None:
    """The weight files' tensor shapes against config.json, from their headers only (no weights
    are downloaded): weights of another size or variant fail here, not after a GPU is granted."""
    base = parse_uri(model_uri)
    files: dict[str, dict[str, tuple[int, ...]]] = {}
    for name in storage.list_children(model_uri):
        if not name.endswith(".safetensors"):
            continue
        uri = base.join(name).uri
        try:
            prefix = storage.read_range(uri, 0, 8)
            header = prefix + storage.read_range(uri, 8, architectures.header_length(prefix) - 8)
            files[name] = architectures.safetensors_shapes(header)
        except (ValueError, KeyError, struct.error) as exc:  # json.JSONDecodeError is a ValueError
            raise ModelInvalid(f"{uri}: not a readable safetensors file: {exc}") from exc
    problem = architectures.weights_problem(architectures.expected_shapes(config_dir), files)
    if problem:
        raise ModelInvalid(f"{model_uri}: {problem}")
