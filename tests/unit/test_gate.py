"""The evaluation gate: kubetune_api.gate.judge_gate on every branch, and the gate's spec rules."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from kubetune_api.gate import judge_gate, metric_value
from kubetune_api.protocol import EvalResult, Evaluations, GateReason, GateResult
from kubetune_api.spec import EvaluationSpec, GateMetric, GateSpec

BASE = EvalResult(loss=5.83, perplexity=340.4, exact_match=0.0, samples=200, metric="numeric", scores={
    "exact_match": 0.0, "normalized_exact_match": 0.0, "prefix_match": 0.0, "numeric": 0.01,
})  # fmt: skip
TUNED = EvalResult(loss=3.37, perplexity=29.1, exact_match=0.89, samples=200, metric="numeric", scores={
    "exact_match": 0.89, "normalized_exact_match": 0.9, "prefix_match": 0.905, "numeric": 0.89,
})  # fmt: skip
EVALS = Evaluations(baseline=BASE, finetuned=TUNED)


def gate(metric: str, threshold: float | None = None, beat: bool = False) -> GateSpec:
    return GateSpec.model_validate({"metric": metric, "threshold": threshold, "mustBeatBaseline": beat})


@pytest.mark.parametrize(
    ("metric", "value"),
    [("evalLoss", 3.37), ("perplexity", 29.1), ("exact_match", 0.89), ("prefix_match", 0.905), ("numeric", 0.89)],
)
def test_metric_value_reads_each_metric(metric: str, value: float) -> None:
    assert metric_value(TUNED, GateMetric(metric)) == value


def test_metric_value_of_a_summary_from_before_scores() -> None:
    old = EvalResult(loss=1.0, exact_match=0.5)
    assert metric_value(old, GateMetric.EXACT_MATCH) == 0.5
    assert metric_value(old, GateMetric.NUMERIC) is None
    assert metric_value(None, GateMetric.EVAL_LOSS) is None


def test_a_loss_at_or_below_the_maximum_passes() -> None:
    result = judge_gate(gate("evalLoss", 3.37), EVALS)  # the threshold itself passes
    assert result == GateResult(
        passed=True,
        metric="evalLoss",
        value=3.37,
        threshold=3.37,
        baseline=5.83,
        reason=GateReason.THRESHOLD_MET,
        message="evalLoss 3.37, at most 3.37",
    )


def test_a_loss_above_the_maximum_fails() -> None:
    result = judge_gate(gate("perplexity", 20.0), EVALS)
    assert not result.passed and result.reason == GateReason.THRESHOLD_NOT_MET
    assert result.message == "perplexity 29.1 is above the maximum 20"


def test_a_score_at_or_above_the_minimum_passes() -> None:
    result = judge_gate(gate("numeric", 0.85, beat=True), EVALS)
    assert result.passed and result.reason == GateReason.THRESHOLD_MET
    assert result.message == "numeric 0.89, at least 0.85, better than the base model's 0.01"


def test_a_score_below_the_minimum_fails() -> None:
    result = judge_gate(gate("exact_match", 0.95), EVALS)
    assert not result.passed and result.reason == GateReason.THRESHOLD_NOT_MET
    assert result.message == "exact_match 0.89 is below the minimum 0.95"


def test_beating_the_baseline_alone_passes() -> None:
    result = judge_gate(gate("evalLoss", beat=True), EVALS)
    assert result.passed and result.reason == GateReason.BEAT_BASELINE and result.must_beat_baseline


@pytest.mark.parametrize(("metric", "tuned"), [("evalLoss", 5.83), ("evalLoss", 6.0), ("exact_match", 0.0)])
def test_equal_to_or_worse_than_the_baseline_fails(metric: str, tuned: float) -> None:
    """Beating is strict: a tie with the base model is not an improvement."""
    field = "loss" if metric == "evalLoss" else "exact_match"
    evals = Evaluations(baseline=BASE, finetuned=EvalResult(**{field: tuned}))
    result = judge_gate(gate(metric, beat=True), evals)
    assert not result.passed and result.reason == GateReason.NOT_BETTER_THAN_BASELINE
    assert "is not better than the base model's" in result.message


def test_both_bars_missed_reports_the_threshold_first_and_both_in_the_message() -> None:
    evals = Evaluations(baseline=EvalResult(loss=1.0), finetuned=EvalResult(loss=2.0))
    result = judge_gate(gate("evalLoss", 1.5, beat=True), evals)
    assert result.reason == GateReason.THRESHOLD_NOT_MET
    assert result.message == "evalLoss 2 is above the maximum 1.5; evalLoss 2 is not better than the base model's 1"


def test_no_value_is_not_evaluated() -> None:
    for evals in (None, Evaluations(), Evaluations(baseline=BASE, finetuned=EvalResult(loss=None))):
        result = judge_gate(gate("evalLoss", 3.0), evals)
        assert not result.passed and result.reason == GateReason.NOT_EVALUATED
        assert "no validation row was evaluated" in result.message


def test_must_beat_a_baseline_that_was_not_evaluated() -> None:
    result = judge_gate(gate("numeric", 0.5, beat=True), Evaluations(finetuned=TUNED))
    assert not result.passed and result.reason == GateReason.BASELINE_NOT_EVALUATED
    assert result.message == "mustBeatBaseline, but the base model has no numeric"


def test_gate_result_round_trips_on_the_wire() -> None:
    result = judge_gate(gate("evalLoss", 3.0), EVALS)
    wire = result.to_wire()
    assert wire["reason"] == "ThresholdNotMet" and wire["mustBeatBaseline"] is False
    assert GateResult.model_validate(wire) == result


def test_an_unknown_reason_from_a_newer_trainer_is_kept() -> None:
    assert (
        GateResult.model_validate({"passed": False, "metric": "x", "reason": "SomethingNew"}).reason == "SomethingNew"
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"metric": "evalLoss"}, "set threshold, mustBeatBaseline or both"),
        (
            {"metric": "exact_match", "threshold": 1.5},
            "threshold 1.5 is above 1, but exact_match is a share of answers",
        ),
        ({"metric": "evalLoss", "threshold": -1}, "greater than or equal to 0"),
        ({"metric": "accuracy", "threshold": 0.5}, "'evalLoss', 'perplexity', 'exact_match'"),
    ],
)
def test_gate_spec_errors(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as error:
        GateSpec.model_validate(raw)
    assert message in str(error.value)


def test_a_loss_threshold_above_one_is_fine() -> None:
    assert GateSpec.model_validate({"metric": "perplexity", "threshold": 25}).threshold == 25


def test_exact_match_turns_generation_on_and_metric_picks_the_headline() -> None:
    assert EvaluationSpec().headline_metric.value == "exact_match"
    spec = EvaluationSpec.model_validate(
        {"exactMatch": True, "metric": "numeric", "gate": {"metric": "prefix_match", "threshold": 0.5}}
    )
    assert spec.headline_metric.value == "numeric"  # the gate may judge any generation metric: all are computed
    legacy = EvaluationSpec.model_validate({"exactMatch": True, "maxSamples": 10})
    assert legacy.exact_match and legacy.metric is None and legacy.gate is None
