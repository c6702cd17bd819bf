"""Evaluation: loss and perplexity on validation sequences (per row too), and generated answers.

Scoring the answers and the error analysis are pure (eval_report); this module runs the model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn import functional

from kubetune_trainer.data import Row
from kubetune_trainer.encode import IGNORE_INDEX, Encoder
from kubetune_trainer.eval_report import Answer
from kubetune_trainer.packing import TrainSequence, iterate_batches


@dataclass
class LossEvaluation:
    """Loss per trainable token over the whole set, and each row's loss sum and token count,
    indexed like the examples the sequences were built from (PreparedData.validation_rows)."""

    loss_sum: float = 0.0
    tokens: int = 0
    row_loss_sums: list[float] = field(default_factory=list)
    row_tokens: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        loss = self.loss_sum / self.tokens if self.tokens else float("nan")
        return {"loss": round(loss, 6), "perplexity": round(math.exp(min(loss, 50.0)), 4), "tokens": self.tokens}


@torch.no_grad()
def eval_loss(
    model: torch.nn.Module,
    sequences: Sequence[TrainSequence],
    batch_size: int,
    pad_id: int,
    device: torch.device,
) -> LossEvaluation:
    """Mean loss per trainable token over the whole set (not a mean of batch means), and per row.

    The loss is computed here from the logits, as transformers' causal-LM loss does (fp32 logits,
    shifted labels, summed cross-entropy over labelled tokens), one sequence at a time so the fp32
    logits of a whole batch are never held at once. Token losses are then summed per packed row:
    a row starts where its position_ids restart at 0, and each sequence lists its rows in order.
    """
    was_training = model.training
    model.eval()
    n_rows = 1 + max((i for s in sequences for i in s.examples), default=-1)
    result = LossEvaluation(row_loss_sums=[0.0] * n_rows, row_tokens=[0] * n_rows)
    starts = range(0, len(sequences), batch_size)
    for start, batch in zip(starts, iterate_batches(sequences, batch_size, pad_id), strict=True):
        chunk = sequences[start : start + batch_size]
        if not any(s.trainable_tokens for s in chunk):
            continue
        # use_cache=False matters: with a KV cache, transformers skips the packed-sequence mask.
        out = model(
            input_ids=batch["input_ids"].to(device), position_ids=batch["position_ids"].to(device), use_cache=False
        )
        for row, seq in enumerate(chunk):
            labels = batch["labels"][row, 1:].to(device)
            token_loss = functional.cross_entropy(
                out.logits[row, :-1].float(), labels, ignore_index=IGNORE_INDEX, reduction="none"
            ).cpu()
            labelled = labels.cpu() != IGNORE_INDEX
            # The packed row each predicted token (position t + 1) belongs to.
            segment = (batch["position_ids"][row] == 0).cumsum(0)[1:] - 1
            segment, losses = segment[labelled], token_loss[labelled].double()
            sums = torch.zeros(len(seq.examples), dtype=torch.float64).scatter_add_(0, segment, losses)
            counts = torch.bincount(segment, minlength=len(seq.examples))
            for k, example in enumerate(seq.examples):
                result.row_loss_sums[example] += float(sums[k])
                result.row_tokens[example] += int(counts[k])
            result.loss_sum += float(losses.sum())
            result.tokens += int(labelled.sum())
    model.train(was_training)
    return result


def cut_at_stop(text: str, stop_strings: Sequence[str] = ()) -> str:
    """Cut at the first stop string (e.g. a text-level <|im_end|>)."""
    for stop in stop_strings:
        text = text.split(stop, 1)[0]
    return text


@torch.no_grad()
def generate_answers(
    model: Any,
    tokenizer: Any,
    encoder: Encoder,
    rows: Sequence[Row],
    max_samples: int,
    max_new_tokens: int,
    device: torch.device,
    batch_size: int = 32,
) -> list[Answer]:
    """Greedy-decode the answer for the first `max_samples` rows, cut at the template's stop strings."""
    was_training = model.training
    model.eval()
    sample = list(rows[:max_samples])
    answers: list[Answer] = []
    tokenizer.padding_side = "left"
    for start in range(0, len(sample), batch_size):
        chunk = sample[start : start + batch_size]
        prompts, references = zip(*(encoder.prompt_and_reference(r) for r in chunk), strict=True)
        enc = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        generated = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            use_cache=True,
        )
        texts = tokenizer.batch_decode(generated[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        for offset, (prompt, reference, text) in enumerate(zip(prompts, references, texts, strict=True)):
            answers.append(Answer(start + offset, prompt, reference, cut_at_stop(text, encoder.stop_strings)))
    tokenizer.padding_side = "right"
    model.train(was_training)
    return answers
