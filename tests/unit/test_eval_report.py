"""The error analysis (eval_report), the row fields it groups by, and what eval.json, manifest.json and the
model card say about it. Pure: no model runs here."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from kubetune_api.gate import judge_gate
from kubetune_api.protocol import EvalResult, Evaluations, GateResult, RunSummary
from kubetune_api.spec import DatasetFormat, EvaluationSpec, GateSpec
from kubetune_trainer.data import Message, Row, parse_row, read_rows
from kubetune_trainer.errors import DatasetInvalid
from kubetune_trainer.eval_report import Answer, check_group_by, error_analysis, score_answers
from kubetune_trainer.export import evaluation_sections, model_card

EVALUATION = EvaluationSpec.model_validate(
    {"exactMatch": True, "metric": "numeric", "groupBy": "category", "worstRows": 2, "maxFailures": 1}
)


def rows() -> list[Row]:
    return [
        Row(source="val.jsonl:1", prompt="two =>", completion=" 2", fields={"category": "units"}),
        Row(source="val.jsonl:2", prompt="twelve =>", completion=" 12", fields={"category": "tens"}),
        Row(source="val.jsonl:3", prompt="forty =>", completion=" 40", fields={"category": "tens"}),
        Row(source="val.jsonl:4", prompt="nine =>", completion=" 9"),  # no category
    ]


ANSWERS = [
    Answer(0, "two =>", " 2", " 2"),
    Answer(1, "twelve =>", " 12", " 21"),
    Answer(2, "forty =>", " 40", " 40.0"),  # numeric accepts it, exact match does not
    Answer(3, "nine =>", " 9", " 6"),
]


# -- Row.fields ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "fmt", "fields"),
    [
        ({"prompt": "a", "completion": "b", "category": "x", "id": 7, "ok": True, "w": 0.5}, "completion",
         {"category": "x", "id": "7", "ok": "true", "w": "0.5"}),
        ({"instruction": "a", "input": "i", "output": "b", "category": "x"}, "instruction", {"category": "x"}),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "topic": "t"},
         "chat", {"topic": "t"}),
        ({"text": "t", "meta": {"nested": 1}, "tags": ["a"], "none": None}, "text", {}),  # only scalars
    ],
)  # fmt: skip
def test_rows_keep_their_other_scalar_keys_as_fields(raw: dict[str, object], fmt: str, fields: dict[str, str]) -> None:
    assert parse_row(raw, DatasetFormat(fmt), "f.jsonl:1").fields == fields


def test_fields_do_not_change_what_a_row_is(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "completion": "b", "category": "x"}\n{"prompt": "a", "completion": "b"}\n')
    first, second = read_rows(path, DatasetFormat.AUTO)[0]
    assert first.fields == {"category": "x"} and second.fields == {}
    stripped = dataclasses.replace(first, fields={})
    assert first == stripped and hash(first) == hash(stripped)  # fields are not part of a row's identity


# -- groupBy -------------------------------------------------------------------------------------


def test_group_by_a_field_no_row_has_fails_naming_it_and_the_keys_found() -> None:
    with pytest.raises(DatasetInvalid) as error:
        check_group_by(rows(), "categroy", "val.jsonl")
    assert str(error.value) == (
        "evaluation.groupBy: no row of val.jsonl has the field 'categroy'; the rows' other keys: ['category']"
    )


def test_group_by_on_rows_without_extra_keys_says_so() -> None:
    with pytest.raises(DatasetInvalid, match="the rows carry no key besides the format's own"):
        check_group_by([Row(source="v:1", prompt="a", completion="b")], "category", "v")


def test_group_by_passes_when_some_row_has_it_or_when_unset() -> None:
    check_group_by(rows(), "category", "val.jsonl")
    check_group_by(rows(), None, "val.jsonl")
    check_group_by([], "category", "val.jsonl")  # no validation rows: nothing to group, nothing to say


# -- scoring and the analysis --------------------------------------------------------------------


def test_score_answers_reports_every_metric_and_the_headline_verdicts() -> None:
    summary, accepted = score_answers(ANSWERS, EVALUATION)
    assert summary["scores"] == {
        "exact_match": 0.25,
        "normalized_exact_match": 0.25,
        "prefix_match": 0.5,
        "numeric": 0.5,
    }
    assert summary["exact_match"] == 0.25 and summary["metric"] == "numeric" and summary["samples"] == 4
    assert accepted == [True, False, True, False]
    assert summary["examples"][1] == {"prompt": "twelve =>", "reference": " 12", "prediction": " 21"}
    assert EvalResult.model_validate(summary).scores == summary["scores"]  # what the RunSummary carries


def test_score_no_answers() -> None:
    summary, accepted = score_answers([], EVALUATION)
    assert summary["exact_match"] is None and summary["scores"] is None and accepted == []


def test_error_analysis_worst_rows_failures_and_groups() -> None:
    # Per-row sums and labelled tokens: losses 0.5, 2.0, 1.0, 3.0 per token.
    sums, tokens = [1.0, 6.0, 2.0, 6.0], [2, 3, 2, 2]
    _, accepted = score_answers(ANSWERS, EVALUATION)
    analysis = error_analysis(rows(), sums, tokens, ANSWERS, accepted, EVALUATION)
    assert analysis["worst_rows"] == [
        {"source": "val.jsonl:4", "loss": 3.0, "tokens": 2, "prompt": "nine =>", "completion": " 9"},
        {"source": "val.jsonl:2", "loss": 2.0, "tokens": 3, "prompt": "twelve =>", "completion": " 12"},
    ]
    assert analysis["metric"] == "numeric" and analysis["failures_total"] == 2
    assert analysis["failures"] == [  # bounded by maxFailures
        {"source": "val.jsonl:2", "prompt": "twelve =>", "expected": " 12", "generated": " 21"}
    ]
    assert analysis["group_by"] == "category"
    assert analysis["groups"] == [
        {"value": "tens", "rows": 2, "loss": 1.6, "samples": 2, "metric": 0.5},  # (6 + 2) / (3 + 2) tokens
        {"value": "(none)", "rows": 1, "loss": 3.0, "samples": 1, "metric": 0.0},
        {"value": "units", "rows": 1, "loss": 0.5, "samples": 1, "metric": 1.0},
    ]


def test_error_analysis_without_generation_or_groups() -> None:
    evaluation = EvaluationSpec(worst_rows=1)
    analysis = error_analysis(rows(), [1.0, 1.0, 1.0, 9.0], [1, 1, 1, 1], [], [], evaluation)
    assert list(analysis) == ["worst_rows"] and analysis["worst_rows"][0]["source"] == "val.jsonl:4"


def test_error_analysis_of_chat_rows_and_rows_without_tokens() -> None:
    chat = Row(source="c:1", messages=(Message("user", "q", False), Message("assistant", "the answer", True)))
    analysis = error_analysis([chat, rows()[0]], [4.0, 0.0], [2, 0], [], [], EvaluationSpec())
    assert analysis["worst_rows"] == [
        {"source": "c:1", "loss": 2.0, "tokens": 2, "last_message": "assistant: the answer"}
    ]


def test_long_texts_are_clipped() -> None:
    long = Answer(0, "p" * 2000, "r" * 2000, "g" * 2000)
    analysis = error_analysis(rows()[:1], [1.0], [1], [long], [False], EvaluationSpec(exact_match=True))
    failure = analysis["failures"][0]
    assert len(failure["prompt"]) == len(failure["expected"]) == len(failure["generated"]) == 501
    assert failure["prompt"].startswith("…") and failure["expected"].endswith("…")


# -- eval.json, manifest.json and the model card -------------------------------------------------


def reports() -> dict[str, object]:
    _, accepted = score_answers(ANSWERS, EVALUATION)
    base = {"loss": 5.8, "perplexity": 330.0, "exact_match": 0.0, "scores": {"exact_match": 0.0, "numeric": 0.0}}
    tuned = {"loss": 3.4, "perplexity": 30.0, "exact_match": 0.25, "scores": {"exact_match": 0.25, "numeric": 0.5}}
    evals = Evaluations(baseline=EvalResult.model_validate(base), finetuned=EvalResult.model_validate(tuned))
    gate = judge_gate(GateSpec.model_validate({"metric": "numeric", "threshold": 0.8}), evals)
    return {
        "baseline": base,
        "finetuned": tuned,
        "gate": gate.model_dump(mode="json", exclude_none=True),
        "error_analysis": error_analysis(rows(), [1.0, 6.0, 2.0, 6.0], [2, 3, 2, 2], ANSWERS, accepted, EVALUATION),
    }


def test_the_model_card_says_whether_the_gate_passed_and_shows_the_analysis() -> None:
    card = model_card("numbers", "s3://m/tiny/", "s3://d/train.jsonl", {"r": 8}, reports())
    assert "| numeric | 0.0% | 50.0% |" in card  # every generation metric in the table
    assert "## Evaluation gate" in card
    assert "The gate on `numeric` **failed** (ThresholdNotMet): numeric 0.5 is below the minimum 0.8." in card
    assert "The adapter is published either way" in card
    assert "| `val.jsonl:4` | 3.0000 | 2 |" in card  # the worst row, by file:line
    assert "Answers `numeric` rejected: 2 (the first 1 below)." in card
    assert "| `val.jsonl:2` | 12 | 21 |" in card
    assert "| category | rows | loss | numeric |" in card and "| tens | 2 | 1.6000 | 50.0% |" in card
    assert card.index("## Evaluation gate") < card.index("## Error analysis") < card.index("## Use")


def test_a_card_without_gate_or_analysis_has_neither_section() -> None:
    assert evaluation_sections({"baseline": {}, "finetuned": {}}) == ""
    card = model_card("j", "m", "d", {}, {"baseline": {"loss": 2.0}, "finetuned": {"loss": 1.0}})
    assert "## Evaluation gate" not in card and "## Error analysis" not in card


def test_a_passed_gate_and_pipes_in_the_text_keep_the_table_whole() -> None:
    evals = reports()
    evals["gate"] = {
        "passed": True,
        "metric": "evalLoss",
        "reason": "ThresholdMet",
        "message": "evalLoss 3.4, at most 4",
    }
    evals["error_analysis"]["failures"][0]["generated"] = "a | b\nc"  # type: ignore[index]
    card = model_card("j", "m", "d", {}, evals)
    assert "The gate on `evalLoss` **passed** (ThresholdMet)" in card
    assert "| a \\| b c |" in card


def test_eval_json_and_the_summary_carry_the_verdict(tmp_path: Path) -> None:
    """What write_reports puts in eval.json is JSON with the gate and the analysis; the RunSummary carries the
    gate on the wire."""
    content = reports()
    text = json.dumps(content)
    loaded = json.loads(text)
    assert loaded["gate"]["passed"] is False and loaded["error_analysis"]["groups"][0]["value"] == "tens"
    gate = GateResult.model_validate(loaded["gate"])
    summary = RunSummary(status="Succeeded", gate=gate)
    assert RunSummary.model_validate_json(summary.to_termination_message()).gate == gate
