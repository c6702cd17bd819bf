"""Packing, batching and collation, plus the packed-sequence boundary on a real model.

The boundary tests are the point of packing's design: an example packed after another
must produce exactly the logits and loss it produces alone.
"""

from __future__ import annotations

import random
from collections import Counter
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kubetune_trainer.data import Row
from kubetune_trainer.encode import IGNORE_INDEX, Encoded, Encoder
from kubetune_trainer.evaluate import eval_loss
from kubetune_trainer.packing import TrainSequence, batch_order, collate, iterate_batches, pack, unpacked


def _example(tag: int, length: int, trainable_from: int = 0) -> Encoded:
    """An example whose token ids identify it (tag * 1000 + position)."""
    ids = [tag * 1000 + i for i in range(length)]
    labels = [IGNORE_INDEX if i < trainable_from else t for i, t in enumerate(ids)]
    return Encoded(input_ids=ids, labels=labels, truncated=False)


def _random_examples(n: int, max_length: int, seed: int = 0) -> list[Encoded]:
    rng = random.Random(seed)
    return [_example(tag + 1, rng.randint(1, max_length), trainable_from=rng.randint(0, 3)) for tag in range(n)]


def _split(seq: TrainSequence) -> list[tuple[list[int], list[int]]]:
    """Cut a packed sequence back into (input_ids, labels) per example, at each position 0."""
    starts = [i for i, p in enumerate(seq.position_ids) if p == 0] + [len(seq)]
    return [(seq.input_ids[a:b], seq.labels[a:b]) for a, b in pairwise(starts)]


# -- pack ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_length", [16, 64, 100])
def test_pack_never_exceeds_max_length(max_length: int) -> None:
    """No packed sequence is longer than max_length."""
    sequences = pack(_random_examples(300, max_length), max_length)
    assert all(0 < len(s) <= max_length for s in sequences)
    assert all(len(s.input_ids) == len(s.labels) == len(s.position_ids) for s in sequences)


def test_pack_keeps_every_example_exactly_once() -> None:
    """Unpacking the packed sequences gives back the input examples, each once, tokens intact."""
    examples = _random_examples(300, 64)
    sequences = pack(examples, 64)
    pieces = [piece for s in sequences for piece in _split(s)]
    assert sum(s.n_examples for s in sequences) == len(examples) == len(pieces)
    assert Counter(tuple(ids) for ids, _ in pieces) == Counter(tuple(e.input_ids) for e in examples)
    assert sum(len(s) for s in sequences) == sum(len(e.input_ids) for e in examples)


def test_pack_is_deterministic() -> None:
    """The same examples in the same order always pack the same way."""
    examples = _random_examples(200, 50, seed=1)
    assert pack(examples, 50) == pack(list(examples), 50)


def test_pack_is_best_fit_decreasing() -> None:
    """Longest first, each into the fullest bin it fits: [60, 4], [34, 30], [30] for max 64."""
    sizes = {1: 30, 2: 60, 3: 4, 4: 34, 5: 30}
    sequences = pack([_example(tag, n) for tag, n in sizes.items()], 64)
    packed = [[ids[0] // 1000 for ids, _ in _split(s)] for s in sequences]
    assert packed == [[2, 3], [4, 1], [5]]
    assert [len(s) for s in sequences] == [64, 64, 30]


def test_pack_full_length_example_gets_its_own_sequence() -> None:
    """An example of exactly max_length fills a sequence alone."""
    sequences = pack([_example(1, 32), _example(2, 1)], 32)
    assert [s.n_examples for s in sequences] == [1, 1]


def test_position_ids_restart_per_example() -> None:
    """Positions count 0..len-1 within each packed example."""
    for seq in pack(_random_examples(100, 40), 40):
        for ids, _ in _split(seq):
            assert [i % 1000 for i in ids] == list(range(len(ids)))
        assert seq.position_ids.count(0) == seq.n_examples


def test_first_label_of_each_packed_example_is_ignored() -> None:
    """Each example's first token gets no label (nothing of its own precedes it); other labels are kept."""
    examples = {tuple(e.input_ids): e for e in _random_examples(100, 40)}
    for seq in pack(list(examples.values()), 40):
        for ids, labels in _split(seq):
            original = examples[tuple(ids)]
            assert labels[0] == IGNORE_INDEX
            assert labels[1:] == original.labels[1:]


def test_trainable_tokens_counts_labels() -> None:
    """TrainSequence.trainable_tokens counts labelled tokens after masking each first token."""
    seq = TrainSequence()
    seq.add(_example(1, 5))  # 4 trainable after masking the first
    seq.add(_example(2, 5, trainable_from=3))  # 2 trainable
    assert seq.trainable_tokens == 6
    assert seq.n_examples == 2


def test_unpacked_is_one_example_per_sequence() -> None:
    """Without packing every example is its own sequence, in input order, with the same masking."""
    examples = _random_examples(10, 20)
    sequences = unpacked(examples)
    assert [s.input_ids for s in sequences] == [e.input_ids for e in examples]
    assert all(s.labels[0] == IGNORE_INDEX and s.n_examples == 1 for s in sequences)


# -- collate and batches ---------------------------------------------------------------------------


def test_collate_pads_and_continues_positions() -> None:
    """Right padding uses the pad id and IGNORE_INDEX; pad positions continue the last example's."""
    short = TrainSequence()
    short.add(_example(1, 3))
    packed = TrainSequence()
    packed.add(_example(2, 2))
    packed.add(_example(3, 3))
    batch = collate([short, packed], pad_id=7)
    assert set(batch) == {"input_ids", "labels", "position_ids"}
    assert batch["input_ids"].dtype == batch["labels"].dtype == batch["position_ids"].dtype == torch.long
    assert batch["input_ids"].tolist() == [[1000, 1001, 1002, 7, 7], [2000, 2001, 3000, 3001, 3002]]
    assert batch["labels"].tolist() == [
        [IGNORE_INDEX, 1001, 1002, IGNORE_INDEX, IGNORE_INDEX],
        [IGNORE_INDEX, 2001, IGNORE_INDEX, 3001, 3002],
    ]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4], [0, 1, 0, 1, 2]]


def test_collate_multiple_of() -> None:
    """multiple_of rounds the padded length up (for tensor-core friendly shapes)."""
    seq = TrainSequence()
    seq.add(_example(1, 5))
    batch = collate([seq], pad_id=0, multiple_of=8)
    assert batch["input_ids"].shape == (1, 8)
    assert batch["position_ids"].tolist() == [list(range(8))]
    assert batch["labels"][0, 5:].tolist() == [IGNORE_INDEX] * 3


def test_iterate_batches_fixed_order() -> None:
    """Evaluation batches keep sequence order and cover every sequence once."""
    sequences = unpacked([_example(tag, 2 + tag % 3) for tag in range(1, 8)])
    batches = list(iterate_batches(sequences, batch_size=3, pad_id=0))
    assert [b["input_ids"].shape[0] for b in batches] == [3, 3, 1]
    firsts = [row[0] // 1000 for b in batches for row in b["input_ids"].tolist()]
    assert firsts == list(range(1, 8))


def test_batch_order_is_a_reproducible_permutation() -> None:
    """Each epoch's micro-batches cover every sequence once; same (seed, epoch), same order."""
    order = batch_order(23, 4, seed=5, epoch=0)
    assert [len(b) for b in order] == [4, 4, 4, 4, 4, 3]
    assert sorted(i for b in order for i in b) == list(range(23))
    assert order == batch_order(23, 4, seed=5, epoch=0)
    assert order != [list(range(i, min(i + 4, 23))) for i in range(0, 23, 4)]  # shuffled


def test_batch_order_differs_across_epochs_and_seeds() -> None:
    """Another epoch or another seed reshuffles."""
    base = batch_order(50, 5, seed=5, epoch=0)
    assert base != batch_order(50, 5, seed=5, epoch=1)
    assert batch_order(50, 5, seed=5, epoch=1) != batch_order(50, 5, seed=5, epoch=2)
    assert base != batch_order(50, 5, seed=6, epoch=0)


# -- the boundary, on a real model -----------------------------------------------------------------


@pytest.fixture(scope="module")
def model_and_encoder(tiny_model_dir: Path) -> tuple[Any, Encoder]:
    torch.manual_seed(0)
    model: Any = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return model, Encoder(tokenizer, max_seq_length=128)


def _encode(encoder: Encoder, pairs: list[tuple[str, str]]) -> list[Encoded]:
    return [encoder.encode(Row(source=f"t:{i}", prompt=p, completion=c)) for i, (p, c) in enumerate(pairs)]


PAIRS = [
    ("eight hundred and seventy-eight =>", " 878"),
    ("three hundred and forty-nine =>", " 349"),
    ("twelve =>", " 12"),
    ("nine hundred and one =>", " 901"),
    ("sixty =>", " 60"),
    ("five hundred and fifty-five =>", " 555"),
]


def test_packed_example_sees_only_itself(model_and_encoder: tuple[Any, Encoder]) -> None:
    """Logits of B packed after A equal B's logits alone (block-diagonal attention via restarting positions)."""
    model, encoder = model_and_encoder
    a, b = _encode(encoder, PAIRS[:2])
    seq = TrainSequence()
    seq.add(a)
    seq.add(b)
    batch = collate([seq], pad_id=0)
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        alone = model(input_ids=torch.tensor([b.input_ids]), use_cache=False).logits
        first = model(input_ids=torch.tensor([a.input_ids]), use_cache=False).logits
    n_a = len(a.input_ids)
    torch.testing.assert_close(packed[0, n_a:], alone[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(packed[0, :n_a], first[0], atol=1e-5, rtol=0)


def test_boundary_test_is_sensitive(model_and_encoder: tuple[Any, Encoder]) -> None:
    """Control: with plain continuing positions (no restart), B does see A and its logits change."""
    model, encoder = model_and_encoder
    a, b = _encode(encoder, PAIRS[:2])
    ids = torch.tensor([a.input_ids + b.input_ids])
    with torch.no_grad():
        leaky = model(input_ids=ids, use_cache=False).logits
        alone = model(input_ids=torch.tensor([b.input_ids]), use_cache=False).logits
    assert (leaky[0, len(a.input_ids) :] - alone[0]).abs().max() > 1e-3


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_eval_loss_packed_equals_unpacked(model_and_encoder: tuple[Any, Encoder], batch_size: int) -> None:
    """Mean loss per trainable token is the same whether examples are packed or not."""
    model, encoder = model_and_encoder
    examples = _encode(encoder, PAIRS)
    packed_seqs = pack(examples, 64)
    assert any(s.n_examples > 1 for s in packed_seqs)  # packing really happened
    device = torch.device("cpu")
    packed = eval_loss(model, packed_seqs, batch_size, 0, device)
    plain = eval_loss(model, unpacked(examples), batch_size, 0, device)
    assert packed.summary()["tokens"] == plain.summary()["tokens"] == sum(e.trainable_tokens for e in examples)
    assert packed.summary()["loss"] == pytest.approx(plain.summary()["loss"], abs=1e-5)
    # Each row's own loss too, though packing reordered and merged the rows.
    assert packed.row_tokens == plain.row_tokens == [e.trainable_tokens for e in examples]
    for packed_sum, plain_sum in zip(packed.row_loss_sums, plain.row_loss_sums, strict=True):
        assert packed_sum == pytest.approx(plain_sum, abs=1e-4)


def test_eval_loss_is_transformers_own_loss_and_rows_add_up(model_and_encoder: tuple[Any, Encoder]) -> None:
    """The loss computed from the logits is what the model computes from labels, and the rows' sums add up
    to it; a row's loss is that row evaluated alone."""
    model, encoder = model_and_encoder
    examples = _encode(encoder, PAIRS)
    packed = eval_loss(model, pack(examples, 64), 4, 0, torch.device("cpu"))
    assert sum(packed.row_loss_sums) == pytest.approx(packed.loss_sum, rel=1e-9)
    assert sum(packed.row_tokens) == packed.tokens
    for index, example in enumerate(examples):
        seq = TrainSequence()
        seq.add(example)
        batch = collate([seq], 0)
        with torch.no_grad():
            reference = model(**batch, use_cache=False).loss  # transformers' mean over labelled tokens
        assert packed.row_loss_sums[index] / packed.row_tokens[index] == pytest.approx(float(reference), abs=1e-4)
