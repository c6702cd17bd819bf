"""Sequences for the model: packing, batching and collation.

Packing puts several examples into one sequence without letting them see each other:
`position_ids` restart at 0 for every example and the attention mask is left to the
model, which (transformers >= 4.54) turns restarting positions into a block-diagonal
causal mask for SDPA/eager/flex, or varlen kernels for flash attention. The first
token of every packed example carries no label, exactly as if it were alone, so
packed and unpacked training optimise the same loss.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from kubetune_trainer.encode import IGNORE_INDEX, Encoded


@dataclass
class TrainSequence:
    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)
    # Which examples it holds, in order: their indices in the list packed. Evaluation uses them to
    # give each validation row its own loss (a row starts where position_ids restart at 0).
    examples: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_examples(self) -> int:
        return len(self.examples)

    def add(self, example: Encoded, index: int = -1) -> None:
        labels = list(example.labels)
        if labels:
            labels[0] = IGNORE_INDEX  # nothing before it in its own example predicts it
        self.input_ids.extend(example.input_ids)
        self.labels.extend(labels)
        self.position_ids.extend(range(len(example.input_ids)))
        self.examples.append(index)

    @property
    def trainable_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def unpacked(examples: Sequence[Encoded]) -> list[TrainSequence]:
    sequences = []
    for index, example in enumerate(examples):
        seq = TrainSequence()
        seq.add(example, index)
        sequences.append(seq)
    return sequences


def pack(examples: Sequence[Encoded], max_length: int) -> list[TrainSequence]:
    """Best-fit-decreasing bin packing; deterministic for a given input order.

    Free capacities are kept as a sorted list of distinct values (at most max_length of
    them), so each placement is a bisect plus a small list edit.
    """
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i].input_ids), i))
    bins: list[TrainSequence] = []
    free_values: list[int] = []  # sorted distinct free capacities
    bins_with_free: dict[int, list[int]] = {}

    def _take(capacity: int) -> int:
        ids = bins_with_free[capacity]
        index = ids.pop()
        if not ids:
            del bins_with_free[capacity]
            free_values.pop(bisect.bisect_left(free_values, capacity))
        return index

    def _put(index: int, capacity: int) -> None:
        if capacity not in bins_with_free:
            bisect.insort(free_values, capacity)
            bins_with_free[capacity] = []
        bins_with_free[capacity].append(index)

    for i in order:
        example = examples[i]
        size = len(example.input_ids)
        slot = bisect.bisect_left(free_values, size)
        if slot < len(free_values):
            capacity = free_values[slot]
            index = _take(capacity)
        else:
            bins.append(TrainSequence())
            index, capacity = len(bins) - 1, max_length
        bins[index].add(example, i)
        _put(index, capacity - size)
    return bins


def batch_order(n_sequences: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Micro-batches of sequence indices for one epoch: shuffled by (seed, epoch), reproducible."""
    order = list(range(n_sequences))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return [order[i : i + batch_size] for i in range(0, n_sequences, batch_size)]


def collate(sequences: Sequence[TrainSequence], pad_id: int, multiple_of: int = 1) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sequence. No attention_mask: right padding is invisible to
    causal attention on real tokens, and pads carry no labels. Pad positions continue the
    last example's positions, so unpacked batches keep the plain causal fast path."""
    length = max(len(s) for s in sequences)
    length = -(-length // multiple_of) * multiple_of
    input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    labels = torch.full((len(sequences), length), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        n = len(seq)
        input_ids[row, :n] = torch.tensor(seq.input_ids)
        labels[row, :n] = torch.tensor(seq.labels)
        position_ids[row, :n] = torch.tensor(seq.position_ids)
        last = seq.position_ids[-1] if n else -1
        position_ids[row, n:] = torch.arange(last + 1, last + 1 + length - n)
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


def iterate_batches(
    sequences: Sequence[TrainSequence], batch_size: int, pad_id: int, multiple_of: int = 1
) -> Iterator[dict[str, torch.Tensor]]:
    """Evaluation order: fixed, no shuffle."""
    for start in range(0, len(sequences), batch_size):
        yield collate(sequences[start : start + batch_size], pad_id, multiple_of)
