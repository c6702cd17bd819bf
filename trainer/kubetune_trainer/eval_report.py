"""What eval.json and the model card say about the fine-tuned model, beyond the averages.

Pure: per-row losses and generated answers in, plain dicts out (no torch). Three views:

    worst_rows   the validation rows with the highest loss per trainable token, with the file:line
                 each came from, so a user can open the row (often a label error, or a kind of
                 example the training data lacks)
    failures     generated answers the headline metric rejected: expected and generated text
    groups       rows, loss and metric per value of one row field (evaluation.groupBy), e.g. per
                 category: where the adapter is weak, not only how weak on average
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kubetune_api.spec import EvaluationSpec, GenerationMetric
from kubetune_trainer.data import Row
from kubetune_trainer.errors import DatasetInvalid
from kubetune_trainer.metrics_registry import scorers

MISSING_GROUP = "(none)"  # the group of rows that lack the groupBy field
TEXT_LIMIT = 500  # characters of a prompt or answer kept in eval.json: enough to recognise the row


@dataclass(frozen=True)
class Answer:
    """One generated answer: `row` indexes the validation rows."""

    row: int
    prompt: str
    reference: str
    answer: str


def _clip(text: str, keep_end: bool = False) -> str:
    if len(text) <= TEXT_LIMIT:
        return text
    return "…" + text[-TEXT_LIMIT:] if keep_end else text[:TEXT_LIMIT] + "…"


def score_answers(answers: Sequence[Answer], evaluation: EvaluationSpec) -> tuple[dict[str, Any], list[bool]]:
    """The generation summary (every metric's share; the headline metric's also as exact_match
    when it is exact_match) and, per answer, whether the headline metric accepted it."""
    headline = evaluation.headline_metric
    results = {
        metric: [score(a.answer, a.reference) for a in answers]
        for metric, score in scorers(evaluation.numeric_tolerance).items()
    }
    share = {metric.value: round(sum(hits) / len(hits), 4) if hits else 0.0 for metric, hits in results.items()}
    summary: dict[str, Any] = {
        "exact_match": share[GenerationMetric.EXACT_MATCH.value] if answers else None,
        "samples": len(answers),
        "metric": headline.value,
        "scores": share if answers else None,
        "examples": [
            {"prompt": a.prompt[-200:], "reference": a.reference, "prediction": a.answer} for a in answers[:5]
        ],
    }
    return summary, results[headline]


def check_group_by(rows: Sequence[Row], group_by: str | None, name: str) -> None:
    """evaluation.groupBy must be a key some validation row carries (a typo would group nothing)."""
    if group_by is None or not rows or any(group_by in row.fields for row in rows):
        return
    found = sorted({key for row in rows for key in row.fields})
    hint = f"the rows' other keys: {found}" if found else "the rows carry no key besides the format's own"
    raise DatasetInvalid(f"evaluation.groupBy: no row of {name} has the field {group_by!r}; {hint}")


def _mean(total: float, count: int) -> float | None:
    return round(total / count, 6) if count else None


def error_analysis(
    rows: Sequence[Row],
    row_loss_sums: Sequence[float],
    row_tokens: Sequence[int],
    answers: Sequence[Answer],
    accepted: Sequence[bool],
    evaluation: EvaluationSpec,
) -> dict[str, Any]:
    """eval.json's error_analysis for the fine-tuned model; `row_*` are indexed like `rows`."""
    losses = [_mean(total, count) for total, count in zip(row_loss_sums, row_tokens, strict=True)]
    ranked = sorted(
        (i for i, loss in enumerate(losses) if loss is not None and math.isfinite(loss)),
        key=lambda i: (-(losses[i] or 0.0), i),
    )
    analysis: dict[str, Any] = {
        "worst_rows": [
            {"source": rows[i].source, "loss": losses[i], "tokens": row_tokens[i], **_texts(rows[i])}
            for i in ranked[: evaluation.worst_rows]
        ],
    }
    if answers:
        failed = [a for a, ok in zip(answers, accepted, strict=True) if not ok]
        analysis["metric"] = evaluation.headline_metric.value
        analysis["failures_total"] = len(failed)
        analysis["failures"] = [
            {
                "source": rows[a.row].source,
                "prompt": _clip(a.prompt, keep_end=True),
                "expected": _clip(a.reference),
                "generated": _clip(a.answer),
            }
            for a in failed[: evaluation.max_failures]
        ]
    if evaluation.group_by is not None:
        analysis["group_by"] = evaluation.group_by
        analysis["groups"] = _groups(rows, row_loss_sums, row_tokens, answers, accepted, evaluation.group_by)
    return analysis


def _texts(row: Row) -> dict[str, str]:
    if row.is_chat:
        last = row.messages[-1]
        return {"last_message": _clip(f"{last.role}: {last.content}")}
    return {"prompt": _clip(row.prompt, keep_end=True), "completion": _clip(row.completion)}


def _groups(
    rows: Sequence[Row],
    row_loss_sums: Sequence[float],
    row_tokens: Sequence[int],
    answers: Sequence[Answer],
    accepted: Sequence[bool],
    field: str,
) -> list[dict[str, Any]]:
    """Per value of `field`: rows, loss per trainable token, and the headline metric's share of the
    rows generated in that group. Largest groups first."""
    stats: dict[str, dict[str, float]] = {}
    for i, row in enumerate(rows):
        key = row.fields.get(field, MISSING_GROUP)
        group = stats.setdefault(key, dict.fromkeys(("rows", "loss", "tokens", "samples", "hits"), 0.0))
        group["rows"] += 1
        group["loss"] += row_loss_sums[i]
        group["tokens"] += row_tokens[i]
    for answer, ok in zip(answers, accepted, strict=True):
        group = stats[rows[answer.row].fields.get(field, MISSING_GROUP)]
        group["samples"] += 1
        group["hits"] += ok
    out = []
    for value, group in sorted(stats.items(), key=lambda item: (-item[1]["rows"], item[0])):
        loss = _mean(group["loss"], int(group["tokens"]))
        entry: dict[str, Any] = {"value": value, "rows": int(group["rows"]), "loss": loss}
        if answers:
            entry["samples"] = int(group["samples"])
            entry["metric"] = round(group["hits"] / group["samples"], 4) if group["samples"] else None
        out.append(entry)
    return out
