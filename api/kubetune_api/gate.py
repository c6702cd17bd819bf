"""The evaluation gate: is the fine-tuned adapter good enough to ship?

One pure function shared by the trainer (which writes the verdict into manifest.json, eval.json,
the model card and its RunSummary) and the operator (which judges again from the summary's
evaluations when an older or trimmed summary carries no verdict). Evaluations in, GateResult out.
"""

from __future__ import annotations

from kubetune_api.protocol import EvalResult, Evaluations, GateReason, GateResult
from kubetune_api.spec import GateMetric, GateSpec


def metric_value(result: EvalResult | None, metric: GateMetric) -> float | None:
    """The value of `metric` in one evaluation; None when it was not computed."""
    if result is None:
        return None
    if metric is GateMetric.EVAL_LOSS:
        return result.loss
    if metric is GateMetric.PERPLEXITY:
        return result.perplexity
    if result.scores and metric.value in result.scores:
        return result.scores[metric.value]
    return result.exact_match if metric is GateMetric.EXACT_MATCH else None  # a summary from before scores


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def judge_gate(gate: GateSpec, evaluations: Evaluations | None) -> GateResult:
    """The verdict. Losses must be at most the threshold, scores at least; "beat" is strict."""
    metric = gate.metric
    evaluations = evaluations or Evaluations()
    value = metric_value(evaluations.finetuned, metric)
    baseline = metric_value(evaluations.baseline, metric)
    verdict = GateResult(
        passed=False,
        metric=metric.value,
        value=value,
        threshold=gate.threshold,
        baseline=baseline,
        must_beat_baseline=gate.must_beat_baseline,
        reason=GateReason.NOT_EVALUATED,
    )
    if value is None:
        verdict.message = f"the fine-tuned model has no {metric.value}: no validation row was evaluated"
        return verdict
    lower = metric.lower_is_better
    problems: list[tuple[GateReason, str]] = []
    if gate.threshold is not None:
        met = value <= gate.threshold if lower else value >= gate.threshold
        if not met:
            bound = "above the maximum" if lower else "below the minimum"
            text = f"{metric.value} {_fmt(value)} is {bound} {_fmt(gate.threshold)}"
            problems.append((GateReason.THRESHOLD_NOT_MET, text))
    if gate.must_beat_baseline:
        if baseline is None:
            problems.append(
                (GateReason.BASELINE_NOT_EVALUATED, f"mustBeatBaseline, but the base model has no {metric.value}")
            )
        elif not (value < baseline if lower else value > baseline):
            problems.append(
                (
                    GateReason.NOT_BETTER_THAN_BASELINE,
                    f"{metric.value} {_fmt(value)} is not better than the base model's {_fmt(baseline)}",
                )
            )
    if problems:
        verdict.reason = problems[0][0]
        verdict.message = "; ".join(text for _, text in problems)
        return verdict
    verdict.passed = True
    parts = [f"{metric.value} {_fmt(value)}"]
    if gate.threshold is not None:
        parts.append(f"{'at most' if lower else 'at least'} {_fmt(gate.threshold)}")
    if gate.must_beat_baseline and baseline is not None:
        parts.append(f"better than the base model's {_fmt(baseline)}")
    verdict.reason = GateReason.THRESHOLD_MET if gate.threshold is not None else GateReason.BEAT_BASELINE
    verdict.message = ", ".join(parts)
    return verdict
