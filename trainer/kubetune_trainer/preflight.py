"""Preflight: everything that can be known about a job without a GPU or the model weights.

Runs as the operator's CPU preflight Job (`kubetune-train --validate-only`) and as
`kubetune validate`: stages only the tokenizer and config files, validates every row,
counts tokens, truncation and packing, and plans the steps.
"""

from __future__ import annotations

from typing import Any

from kubetune_api.trainer_config import TrainerConfig


def validate_dataset(config: TrainerConfig) -> dict[str, Any]:
    """Everything a preflight can know without a GPU: row checks, tokens, steps."""
    from kubetune_trainer.encode import Encoder
    from kubetune_trainer.modeling import TOKENIZER_FILES, check_seq_length, load_tokenizer
    from kubetune_trainer.prepare import plan, prepare
    from kubetune_trainer.storage import Storage

    storage = Storage(config.storage, config.runtime.cache_dir)
    model_dir = storage.stage_dir(config.base_model_uri, only=frozenset(TOKENIZER_FILES))
    check_seq_length(model_dir, config.training.max_seq_length)
    train_path = storage.stage_file(config.dataset.train)
    val_path = storage.stage_file(config.dataset.validation) if config.dataset.validation else None
    tokenizer = load_tokenizer(model_dir)
    encoder = Encoder(tokenizer, config.training.max_seq_length, config.training.completion_only_loss)
    data = prepare(config.dataset, config.training, encoder, train_path, val_path)
    device = "cuda" if config.runtime.device == "cuda" else "cpu"
    steps = plan(config.training, data.stats, device)
    return {"job": config.job_name, "data": data.stats.as_dict(), "plan": steps.__dict__}
