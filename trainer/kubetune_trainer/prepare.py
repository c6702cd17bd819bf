"""From staged JSONL files to training sequences, plus the numbers a user wants before
spending a GPU: rows, tokens, truncation, steps. Shared by training and `validate`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from kubetune_api.protocol import DataQuality, DataStats, StepPlan
from kubetune_api.spec import AUTO, DatasetSpec, TrainingSpec
from kubetune_trainer.data import Row, decode_jsonl, read_rows, split_rows
from kubetune_trainer.encode import Encoded, Encoder
from kubetune_trainer.errors import DatasetInvalid
from kubetune_trainer.packing import TrainSequence, pack, unpacked
from kubetune_trainer.quality import CheckedRow, QualityInputs, data_quality, row_formats

# OpenAI's auto-epochs heuristic: 3 epochs, but see at least 100 and at most 25k examples.
DEFAULT_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MAX_AUTO_EPOCHS = 25
AUTO_BATCH_TOKENS = {"cuda": 16_384, "cpu": 4_096}


@dataclass
class PreparedData:
    train: list[TrainSequence]
    validation: list[TrainSequence]
    validation_rows: list[Row]
    stats: DataStats
    # The encoded rows the sequences were built from: kept so that packing can be turned off
    # after the model is loaded (packing_check) without reading and tokenizing again.
    train_examples: list[Encoded]
    validation_examples: list[Encoded]
    quality: DataQuality | None = None  # the data-quality report (kubetune_trainer.quality)

    def without_packing(self, max_seq_length: int) -> PreparedData:
        """The same rows, one per sequence (padded in the batch instead of packed)."""
        train, validation = unpacked(self.train_examples), unpacked(self.validation_examples)
        stats = self.stats.model_copy(
            update={"train_sequences": len(train), "packing_efficiency": _efficiency(train, False, max_seq_length)}
        )
        return PreparedData(
            train, validation, self.validation_rows, stats, self.train_examples, self.validation_examples, self.quality
        )


def _efficiency(sequences: list[TrainSequence], packing: bool, max_seq_length: int) -> float:
    tokens = sum(len(s) for s in sequences)
    capacity = len(sequences) * max_seq_length if packing else tokens
    return round(tokens / capacity, 4) if capacity else 1.0


def _encode_all(encoder: Encoder, rows: list[Row]) -> tuple[list[tuple[Row, Encoded]], list[CheckedRow]]:
    kept: list[tuple[Row, Encoded]] = []
    checked: list[CheckedRow] = []
    for row in rows:
        encoded = encoder.encode(row)
        # Truncation can cut away every trainable token; such a row teaches nothing.
        dropped = encoded.trainable_tokens == 0
        checked.append(CheckedRow(row, encoded.full_length, encoded.truncated, dropped))
        if not dropped:
            kept.append((row, encoded))
    return kept, checked


def _row_formats(path: Path, name: str) -> list[tuple[str, str]]:
    # A second, cheap read of a file read_rows accepted (no tokenizer): each row's own format.
    return row_formats(decode_jsonl(path.read_bytes(), name), name)


def prepare(
    dataset: DatasetSpec,
    training: TrainingSpec,
    encoder: Encoder,
    train_path: Path,
    validation_path: Path | None,
    model_max_length: int | None = None,
) -> PreparedData:
    """`model_max_length`: the model's positions, for the quality report's advice."""
    train_name = Path(dataset.train).name
    rows, fmt = read_rows(train_path, dataset.format, name=train_name)
    formats = _row_formats(train_path, train_name)
    if validation_path is not None:
        validation_name = Path(dataset.validation or "").name
        validation_rows, _ = read_rows(validation_path, fmt, name=validation_name)
        formats += _row_formats(validation_path, validation_name)
        train_rows = rows
    else:
        train_rows, validation_rows = split_rows(rows, dataset.validation_split, training.seed)

    train_kept, train_checked = _encode_all(encoder, train_rows)
    val_kept, val_checked = _encode_all(encoder, validation_rows)
    train_enc = [e for _, e in train_kept]
    val_enc = [e for _, e in val_kept]
    if not train_enc:
        raise DatasetInvalid(
            f"{dataset.train}: no row has a trainable token after truncation to "
            f"training.maxSeqLength={training.max_seq_length}"
        )
    build = (lambda ex: pack(ex, training.max_seq_length)) if training.packing else unpacked
    train_seqs = build(train_enc)
    val_seqs = build(val_enc)
    lengths = [len(e.input_ids) for e in train_enc]
    total_tokens = sum(lengths)
    stats = DataStats(
        format=fmt.value,
        train_rows=len(train_enc),
        validation_rows=len(val_enc),
        train_tokens=total_tokens,
        trainable_tokens=sum(e.trainable_tokens for e in train_enc),
        validation_tokens=sum(len(e.input_ids) for e in val_enc),
        truncated_rows=sum(c.truncated for c in train_checked + val_checked),
        dropped_rows=sum(c.dropped for c in train_checked + val_checked),
        max_row_tokens=max(lengths),
        mean_row_tokens=round(total_tokens / len(lengths), 2),
        train_sequences=len(train_seqs),
        packing_efficiency=_efficiency(train_seqs, training.packing, training.max_seq_length),
    )
    quality = data_quality(
        train_checked,
        val_checked,
        stats.trainable_tokens,
        QualityInputs(
            max_seq_length=training.max_seq_length,
            format=fmt.value,
            row_formats=formats,
            validation_split=validation_path is None,
            model_max_length=model_max_length,
        ),
    )
    return PreparedData(train_seqs, val_seqs, [r for r, _ in val_kept], stats, train_enc, val_enc, quality)


def resolve_epochs(training: TrainingSpec, n_examples: int) -> int:
    if training.epochs != AUTO:
        return int(training.epochs)
    epochs = DEFAULT_EPOCHS
    if n_examples * epochs < MIN_TARGET_EXAMPLES:
        epochs = min(MAX_AUTO_EPOCHS, math.ceil(MIN_TARGET_EXAMPLES / max(1, n_examples)))
    elif n_examples * epochs > MAX_TARGET_EXAMPLES:
        epochs = max(1, MAX_TARGET_EXAMPLES // n_examples)
    return epochs


def resolve_batch_size(training: TrainingSpec, device_type: str, mean_sequence_tokens: float) -> int:
    if training.batch_size != AUTO:
        return int(training.batch_size)
    budget = AUTO_BATCH_TOKENS.get(device_type, AUTO_BATCH_TOKENS["cpu"])
    per_sequence = training.max_seq_length if training.packing else max(1.0, mean_sequence_tokens)
    return max(1, min(256, int(budget // per_sequence)))


def plan_steps(training: TrainingSpec, stats: DataStats, device_type: str, world_size: int = 1) -> StepPlan:
    """Epochs, batch size and optimizer steps for `world_size` processes on `device_type`."""
    epochs = resolve_epochs(training, stats.train_rows)
    mean_seq = stats.train_tokens / max(1, stats.train_sequences)
    batch_size = resolve_batch_size(training, device_type, mean_seq)
    micro_batches = math.ceil(stats.train_sequences / (batch_size * world_size))
    steps_per_epoch = max(1, math.ceil(micro_batches / training.gradient_accumulation_steps))
    total = training.max_steps or epochs * steps_per_epoch
    return StepPlan(
        epochs=epochs if not training.max_steps else math.ceil(total / steps_per_epoch),
        batch_size=batch_size,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        warmup_steps=round(total * training.warmup_ratio),
    )
