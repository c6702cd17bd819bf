"""The data-quality report (kubetune_trainer.quality): each metric, and each warning's threshold from
just below to just above (docs/data.md#quality)."""

from __future__ import annotations

import json

import pytest

from kubetune_api.protocol import DataQuality, QualityCode
from kubetune_trainer import quality
from kubetune_trainer.data import Message, Row
from kubetune_trainer.errors import DataQualityFailed
from kubetune_trainer.quality import CheckedRow, QualityInputs, data_quality, normalise

INPUTS = QualityInputs(max_seq_length=64, format="completion")
PLENTY = 10_000  # trainable tokens: above MIN_TRAINABLE_TOKENS unless a test says otherwise


def row(i: int, prompt: str | None = None, completion: str | None = None, source: str = "train.jsonl") -> Row:
    """A row that shares no word 3-gram with any other row of these tests."""
    return Row(
        source=f"{source}:{i + 1}",
        prompt=prompt if prompt is not None else f"question {i} on topic {i * 7919 % 1000} =>",
        completion=completion if completion is not None else f" answer {i}",
    )


def checked(r: Row, tokens: int = 20, truncated: bool = False, dropped: bool = False) -> CheckedRow:
    return CheckedRow(r, tokens, truncated, dropped)


def rows(n: int, source: str = "train.jsonl", start: int = 0) -> list[CheckedRow]:
    return [checked(row(i, source=source)) for i in range(start, start + n)]


def report(
    train: list[CheckedRow],
    validation: list[CheckedRow] | None = None,
    trainable: int = PLENTY,
    inputs: QualityInputs = INPUTS,
) -> DataQuality:
    return data_quality(train, validation or [], trainable, inputs)


def codes(result: DataQuality) -> list[str]:
    return [str(w.code) for w in result.warnings]


def warning(result: DataQuality, code: QualityCode) -> tuple[str, str | None, str | None]:
    found = next(w for w in result.warnings if w.code == code)
    return found.message, found.field, found.example


def test_clean_rows_give_no_warning_and_the_numbers() -> None:
    train = [checked(row(i), tokens=10 + i) for i in range(100)]
    result = report(train, rows(10, "validation.jsonl", start=500))
    assert result.warnings == []
    assert (result.train_lengths.p50, result.train_lengths.p95, result.train_lengths.max) == (60, 105, 109)
    assert result.validation_lengths is not None and result.validation_lengths.max == 20
    assert result.rows == 110 and result.truncated_rows == 0 and result.truncated_share == 0.0
    assert (result.duplicate_rows, result.near_duplicate_rows, result.leaked_validation_rows) == (0, 0, 0)
    assert result.empty_answers == 0 and result.trainable_tokens == PLENTY


def test_normalise_folds_case_punctuation_width_and_whitespace() -> None:
    assert normalise("  Hello,   WORLD!\n") == "hello world"
    assert normalise("ｆｕｌｌ－ｗｉｄｔｈ") == "full width"  # NFKC
    assert normalise("snake_case") == "snake case"


@pytest.mark.parametrize(("p95", "suggested"), [(1, 64), (64, 64), (65, 128), (125, 128), (1000, 1024)])
def test_suggested_max_seq_length_rounds_the_p95_up_to_a_multiple_of_64(p95: int, suggested: int) -> None:
    assert quality.suggested_max_seq_length(p95) == suggested


# -- truncation and dropped rows -----------------------------------------------------------------


@pytest.mark.parametrize(("truncated", "warns"), [(5, False), (6, True)])
def test_truncated_rows_warn_above_five_percent_naming_the_length_that_fits_p95(truncated: int, warns: bool) -> None:
    train = [checked(row(i), tokens=300, truncated=True) for i in range(truncated)]
    train += [checked(row(i), tokens=40) for i in range(truncated, 100)]
    result = report(train)
    assert result.truncated_rows == truncated and result.truncated_share == truncated / 100
    assert (QualityCode.TRUNCATED_ROWS in codes(result)) is warns
    if warns:
        message, field, example = warning(result, QualityCode.TRUNCATED_ROWS)
        assert field == "training.maxSeqLength" and example == "train.jsonl:1"
        assert message.startswith("6 of 100 rows (6%) are longer than training.maxSeqLength=64 and are cut")
        assert "training.maxSeqLength: 320 would fit 95% of training rows (p95 300 tokens)" in message


def test_a_suggestion_above_the_model_limit_says_to_shorten_rows_instead() -> None:
    train = [checked(row(i), tokens=5000, truncated=True) for i in range(100)]
    inputs = QualityInputs(max_seq_length=2048, format="completion", model_max_length=4096)
    message, _, _ = warning(report(train, inputs=inputs), QualityCode.TRUNCATED_ROWS)
    assert "training.maxSeqLength: 5056 would fit 95%" in message
    assert "above the model's 4096 positions: shorten the longest rows instead" in message


@pytest.mark.parametrize(("dropped", "warns"), [(0, False), (1, True)])
def test_any_dropped_row_warns_with_an_example(dropped: int, warns: bool) -> None:
    train = rows(100) + [checked(row(200 + i), 90, truncated=True, dropped=True) for i in range(dropped)]
    result = report(train)
    assert result.dropped_rows == dropped
    assert (QualityCode.DROPPED_ROWS in codes(result)) is warns
    if warns:
        message, field, example = warning(result, QualityCode.DROPPED_ROWS)
        assert field == "training.maxSeqLength" and example == "train.jsonl:201"
        assert "1 rows lost every trainable token to truncation at training.maxSeqLength=64" in message


# -- duplicates ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("copies", "warns"), [(1, False), (2, True)])
def test_exact_duplicates_warn_above_one_percent(copies: int, warns: bool) -> None:
    train = rows(100 - copies) + [checked(row(i, source="train.jsonl")) for i in range(copies)]
    result = report(train)
    assert result.duplicate_rows == copies and result.near_duplicate_rows == 0
    assert (QualityCode.DUPLICATE_ROWS in codes(result)) is warns
    if warns:
        message, field, example = warning(result, QualityCode.DUPLICATE_ROWS)
        assert field == "dataset.train" and example == "train.jsonl:1"
        assert message.startswith("2 training rows (2.0%) repeat an earlier row exactly")


def near_copy(i: int, source_line: int) -> CheckedRow:
    """Row i again up to case and punctuation: a normalised duplicate."""
    original = row(i)
    return checked(
        Row(f"train.jsonl:{source_line}", prompt=original.prompt.upper() + "!!", completion="  Answer " + str(i))
    )


@pytest.mark.parametrize(("near", "warns"), [(5, False), (6, True)])
def test_near_duplicates_warn_above_five_percent(near: int, warns: bool) -> None:
    train = rows(100 - near) + [near_copy(i, 1000 + i) for i in range(near)]
    result = report(train)
    assert result.near_duplicate_rows == near and result.duplicate_rows == 0
    assert (QualityCode.NEAR_DUPLICATE_ROWS in codes(result)) is warns
    if warns:
        message, field, _ = warning(result, QualityCode.NEAR_DUPLICATE_ROWS)
        assert field == "dataset.train"
        assert "e.g. train.jsonl:1000 and train.jsonl:1" in message


LONG = " ".join(f"word{i}" for i in range(60))


def test_minhash_finds_rows_that_differ_in_a_word_and_not_rows_that_share_a_template() -> None:
    edited = LONG.replace("word30", "changed")  # 3 of 58 trigrams differ: Jaccard 55/61 = 0.90
    train = [checked(row(0, LONG, " yes")), checked(row(1, edited, " yes"))]
    assert report(train).near_duplicate_rows == 1
    assert quality.jaccard(frozenset({1, 2}), frozenset({2, 3})) == pytest.approx(1 / 3)
    # The quickstart's rows: number words that share most words but few 3-grams.
    numbers = [checked(row(i, f"seven hundred and {w} =>", f" 7{i}")) for i, w in enumerate(["one", "two", "three"])]
    assert report(numbers).near_duplicate_rows == 0


def test_a_shared_system_prompt_does_not_make_conversations_near_duplicates() -> None:
    system = Message("system", LONG, False)

    def chat(i: int) -> CheckedRow:
        turns = (
            system,
            Message("user", f"question {i} on topic {i * 31}", False),
            Message("assistant", f"answer {i}", True),
        )
        return checked(Row(f"train.jsonl:{i + 1}", messages=turns))

    assert report([chat(i) for i in range(20)]).near_duplicate_rows == 0


# -- leakage -------------------------------------------------------------------------------------


def test_no_leakage_without_overlap() -> None:
    result = report(rows(50), rows(10, "validation.jsonl", start=500))
    assert result.leaked_validation_rows == 0 and QualityCode.VALIDATION_LEAKAGE not in codes(result)


def test_validation_rows_in_training_exactly_normalised_or_nearly_leak() -> None:
    train = [*rows(50), checked(row(60, LONG, " yes"))]
    validation = [
        checked(row(3, source="validation.jsonl")),  # exact
        checked(Row("validation.jsonl:2", prompt=row(4).prompt.upper(), completion=row(4).completion)),  # normalised
        checked(Row("validation.jsonl:3", prompt=LONG.replace("word30", "other"), completion=" yes")),  # near
        *rows(5, "validation.jsonl", start=500),
    ]
    result = report(train, validation)
    assert result.leaked_validation_rows == 3
    message, field, example = warning(result, QualityCode.VALIDATION_LEAKAGE)
    assert field == "dataset.validation" and example == "validation.jsonl:4"
    assert message.startswith("3 validation rows are also in training")
    assert "e.g. validation.jsonl:4 and train.jsonl:4" in message and "remove them from dataset.validation" in message


def test_leakage_from_a_split_names_the_split_and_the_train_file() -> None:
    inputs = QualityInputs(max_seq_length=64, format="completion", validation_split=True)
    result = report(rows(50), [checked(row(3))], inputs=inputs)
    message, field, _ = warning(result, QualityCode.VALIDATION_LEAKAGE)
    assert field == "dataset.validationSplit" and "deduplicate it" in message


# -- empty answers, formats, trainable tokens ----------------------------------------------------


@pytest.mark.parametrize("answer", [".", "\u200b", " - ", "…"])
def test_answers_with_no_letter_digit_or_symbol_warn(answer: str) -> None:
    result = report([*rows(50), checked(row(99, completion=answer))])
    assert result.empty_answers == 1
    message, field, example = warning(result, QualityCode.EMPTY_ANSWERS)
    assert field == "dataset.train" and example == "train.jsonl:100"
    assert message.startswith("1 rows have a completion or assistant turn with no letter, digit or symbol")


@pytest.mark.parametrize("answer", ["702", "👍", "x", "$"])
def test_short_answers_with_content_do_not_warn(answer: str) -> None:
    assert report([*rows(50), checked(row(99, completion=answer))]).empty_answers == 0


def test_an_empty_assistant_turn_in_a_validation_file_names_dataset_validation() -> None:
    turns = (Message("user", "hi", False), Message("assistant", "...", False), Message("assistant", "ok", True))
    result = report(rows(50), [checked(Row("validation.jsonl:7", messages=turns))])
    _, field, example = warning(result, QualityCode.EMPTY_ANSWERS)
    assert (field, example) == ("dataset.validation", "validation.jsonl:7")


def test_row_formats_are_detected_per_row_and_a_mixed_file_warns() -> None:
    lines = [
        json.dumps({"prompt": "a", "completion": "b"}),
        "",
        json.dumps({"prompt": "c", "completion": "d", "messages": [{"role": "user", "content": "c"}]}),
    ]
    formats = quality.row_formats("\n".join(lines), "train.jsonl")
    assert formats == [("train.jsonl:1", "completion"), ("train.jsonl:3", "chat")]
    one = report(rows(50), inputs=QualityInputs(64, "completion", formats[:1]))
    assert one.rows_per_format == {"completion": 1} and QualityCode.MIXED_FORMATS not in codes(one)
    mixed = report(rows(50), inputs=QualityInputs(64, "completion", formats))
    assert mixed.rows_per_format == {"chat": 1, "completion": 1}
    message, field, example = warning(mixed, QualityCode.MIXED_FORMATS)
    assert field == "dataset.format" and example == "train.jsonl:3"
    assert "(1 chat, 1 completion); they were all read as completion" in message


@pytest.mark.parametrize(("tokens", "warns"), [(999, True), (1000, False)])
def test_fewer_than_a_thousand_trainable_tokens_warn(tokens: int, warns: bool) -> None:
    result = report(rows(50), trainable=tokens)
    assert (QualityCode.FEW_TRAINABLE_TOKENS in codes(result)) is warns
    if warns:
        message, field, _ = warning(result, QualityCode.FEW_TRAINABLE_TOKENS)
        assert field == "dataset.train" and message.startswith("only 999 tokens carry a label after truncation")


# -- failOnWarnings ------------------------------------------------------------------------------


def test_enforce_fails_only_with_warnings_and_fail_on_warnings() -> None:
    clean, bad = report(rows(50)), report(rows(50), trainable=10)
    quality.enforce(clean, True)
    quality.enforce(bad, False)
    quality.enforce(None, True)
    with pytest.raises(DataQualityFailed) as info:
        quality.enforce(bad, True)
    assert str(info.value).startswith(
        "preflight.failOnWarnings is true and the data-quality report has 1 warning(s): FewTrainableTokens: only 10"
    )
    assert info.value.exit_code == 16 and info.value.user_error
