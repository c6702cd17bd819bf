"""Generation metrics: named scorers of a generated answer against the reference. Pure; no torch.

Each scorer takes (answer, reference) with the answer already cut at the chat template's stop
strings, and says whether the answer is right. `evaluation.metric` picks the one reported first;
all are computed, since scoring costs nothing next to generating.

    exact_match             equal once whitespace is collapsed (kubetune's exact match since 0.1)
    normalized_exact_match  also ignoring case and punctuation (SQuAD's normalisation, less the
                            English articles: the data may be in any language)
    prefix_match            the answer starts with the reference: a model that says the answer
                            and keeps generating still counts
    numeric                 the first number in each is the same within a tolerance (math.isclose)
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections.abc import Callable

from kubetune_api.spec import GenerationMetric, NumericTolerance

Scorer = Callable[[str, str], bool]

# A decimal number, signed, with optional thousands separators and exponent: "-1,234.5e3".
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?")
_PUNCTUATION = frozenset(string.punctuation)


def collapse_whitespace(text: str) -> str:
    return " ".join(text.split())


def normalize(text: str) -> str:
    """Lower case, no punctuation (ASCII or Unicode category P*), whitespace collapsed."""
    kept = (" " if ch in _PUNCTUATION or unicodedata.category(ch).startswith("P") else ch for ch in text.casefold())
    return collapse_whitespace("".join(kept))


def first_number(text: str) -> float | None:
    """The first number in `text` ("about 1,204.5 km" -> 1204.5); None when there is none."""
    for match in _NUMBER.finditer(text):
        token = match.group(0)
        if not any(ch.isdigit() for ch in token):
            continue
        try:
            return float(token.replace(",", ""))
        except ValueError:
            continue
    return None


def exact_match(answer: str, reference: str) -> bool:
    return collapse_whitespace(answer) == collapse_whitespace(reference)


def normalized_exact_match(answer: str, reference: str) -> bool:
    return normalize(answer) == normalize(reference)


def prefix_match(answer: str, reference: str) -> bool:
    expected = collapse_whitespace(reference)
    return bool(expected) and collapse_whitespace(answer).startswith(expected)


def numeric_scorer(tolerance: NumericTolerance) -> Scorer:
    def numeric(answer: str, reference: str) -> bool:
        expected, got = first_number(reference), first_number(answer)
        if expected is None or got is None:
            return False
        return math.isclose(got, expected, rel_tol=tolerance.relative, abs_tol=tolerance.absolute)

    return numeric


def scorers(tolerance: NumericTolerance | None = None) -> dict[GenerationMetric, Scorer]:
    """Every generation metric's scorer; `tolerance` is evaluation.numericTolerance."""
    return {
        GenerationMetric.EXACT_MATCH: exact_match,
        GenerationMetric.NORMALIZED_EXACT_MATCH: normalized_exact_match,
        GenerationMetric.PREFIX_MATCH: prefix_match,
        GenerationMetric.NUMERIC: numeric_scorer(tolerance or NumericTolerance()),
    }
