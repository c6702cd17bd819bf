"""The generation metrics: each scorer on what it must accept and what it must refuse."""

from __future__ import annotations

import pytest

from kubetune_api.spec import GenerationMetric, NumericTolerance
from kubetune_trainer.metrics_registry import (
    exact_match,
    first_number,
    normalize,
    normalized_exact_match,
    numeric_scorer,
    prefix_match,
    scorers,
)


def test_every_named_metric_has_a_scorer() -> None:
    assert set(scorers()) == set(GenerationMetric)


@pytest.mark.parametrize(
    ("answer", "reference", "expected"),
    [
        (" 702", " 702", True),
        ("702\n", " 702", True),  # surrounding whitespace is not part of the answer
        ("New  York", "New York", True),  # nor runs of it
        ("702", "703", False),
        ("Paris", "paris", False),  # case counts
        ("702.", "702", False),  # punctuation counts
        ("702 and more", "702", False),
    ],
)
def test_exact_match(answer: str, reference: str, expected: bool) -> None:
    assert exact_match(answer, reference) is expected


@pytest.mark.parametrize(
    ("answer", "reference", "expected"),
    [
        ("Paris.", "paris", True),
        ("  NEW-YORK!", "new york", True),  # a hyphen is punctuation: it separates words
        ("«Oui», dit-il", "oui dit il", True),  # Unicode punctuation too
        ("Paris, France", "Paris", False),
        ("", "x", False),
    ],
)
def test_normalized_exact_match(answer: str, reference: str, expected: bool) -> None:
    assert normalized_exact_match(answer, reference) is expected


def test_normalize() -> None:
    assert normalize(" It's  A\tTest! ") == "it s a test"


@pytest.mark.parametrize(
    ("answer", "reference", "expected"),
    [
        (" 702 => seven hundred", " 702", True),  # kept generating after the answer
        ("702", " 702", True),
        ("70", "702", False),  # shorter than the reference
        ("anything", "   ", False),  # an empty reference is no evidence of anything
    ],
)
def test_prefix_match(answer: str, reference: str, expected: bool) -> None:
    assert prefix_match(answer, reference) is expected


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("702", 702.0),
        ("about 1,204.5 km", 1204.5),
        ("-3e2 degrees", -300.0),
        ("costs .5", 0.5),
        ("no digits here", None),
        ("", None),
    ],
)
def test_first_number(text: str, number: float | None) -> None:
    assert first_number(text) == number


def test_numeric_exact_by_default() -> None:
    numeric = numeric_scorer(NumericTolerance())
    assert numeric(" 702.0 apples", "702")  # the value, not the spelling
    assert not numeric("703", "702")
    assert not numeric("seven hundred", "702")  # no number in the answer
    assert not numeric("702", "n/a")  # no number in the reference


def test_numeric_absolute_tolerance() -> None:
    numeric = numeric_scorer(NumericTolerance(absolute=0.5))
    assert numeric("3.6", "3.14") and numeric("2.7", "3.14")
    assert not numeric("3.7", "3.14")


def test_numeric_relative_tolerance() -> None:
    numeric = numeric_scorer(NumericTolerance(relative=0.01))
    assert numeric("1009", "1000")  # 0.9 %
    assert not numeric("1020", "1000")  # 2 %
    assert not numeric("0.001", "0")  # relative tolerance around 0 accepts only 0


def test_numeric_either_tolerance_passes() -> None:
    numeric = numeric_scorer(NumericTolerance(absolute=0.01, relative=0.01))
    assert numeric("0.005", "0")  # absolute
    assert numeric("1005", "1000")  # relative
    assert not numeric("1100", "1000")
