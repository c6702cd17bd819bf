"""Evaluation: loss and perplexity on validation sequences, and exact match by generation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from kubetune_trainer.data import Row
from kubetune_trainer.encode import Encoder
from kubetune_trainer.packing import TrainSequence, iterate_batches


@torch.no_grad()
def eval_loss(
    model: torch.nn.Module,
    sequences: Sequence[TrainSequence],
    batch_size: int,
    pad_id: int,
    device: torch.device,
) -> dict[str, float]:
    """Mean loss per trainable token over the whole set (not a mean of batch means)."""
    was_training = model.training
    model.eval()
    total_loss, total_tokens = 0.0, 0
    for batch in iterate_batches(sequences, batch_size, pad_id):
        n_tokens = int((batch["labels"][:, 1:] != -100).sum())
        if n_tokens == 0:
            continue
        batch = {k: v.to(device) for k, v in batch.items()}
        # use_cache=False matters: with a KV cache, transformers skips the packed-sequence mask.
        out = model(**batch, num_items_in_batch=torch.tensor(n_tokens, device=device), use_cache=False)
        total_loss += float(out.loss) * n_tokens
        total_tokens += n_tokens
    model.train(was_training)
    loss = total_loss / total_tokens if total_tokens else float("nan")
    return {"loss": round(loss, 6), "perplexity": round(math.exp(min(loss, 50.0)), 4), "tokens": total_tokens}


def _normalise(text: str, stop_strings: Sequence[str] = ()) -> str:
    """Cut at the first stop string (e.g. a text-level <|im_end|>), then collapse whitespace."""
    for stop in stop_strings:
        text = text.split(stop, 1)[0]
    return " ".join(text.split())


@torch.no_grad()
def exact_match(
    model: Any,
    tokenizer: Any,
    encoder: Encoder,
    rows: Sequence[Row],
    max_samples: int,
    max_new_tokens: int,
    device: torch.device,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Greedy-decode the answer for up to `max_samples` rows; compare whitespace-normalised."""
    was_training = model.training
    model.eval()
    sample = list(rows[:max_samples])
    hits = 0
    examples: list[dict[str, str]] = []
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
        answers = tokenizer.batch_decode(generated[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        for prompt, reference, answer in zip(prompts, references, answers, strict=True):
            hit = _normalise(answer, encoder.stop_strings) == _normalise(reference)
            hits += hit
            if len(examples) < 5:
                examples.append({"prompt": prompt[-200:], "reference": reference, "prediction": answer})
    tokenizer.padding_side = "right"
    model.train(was_training)
    return {
        "exact_match": round(hits / len(sample), 4) if sample else None,
        "samples": len(sample),
        "examples": examples,
    }
