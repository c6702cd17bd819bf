"""Is the data good, not only well-formed: the data-quality report of preflight.

`data_quality(train, validation, ...)` is a pure function of the validated rows and their token
counts; it returns a `kubetune_api.protocol.DataQuality` with the numbers and the warnings over
the thresholds below (documented in docs/data.md#quality, same names). No tokenizer, no torch.

Duplicates, in three strengths, each row counted once under the strongest that applies:
- exact: the same messages (role and content) or the same prompt and completion;
- normalised: equal after NFKC, case folding, punctuation to spaces and whitespace collapsed
  ("Hello, World!" and "hello world");
- near: Jaccard similarity of word 3-gram sets >= NEAR_DUPLICATE_JACCARD, found with MinHash
  (NUM_PERMUTATIONS multiply-shift hashes) and LSH banding (LSH_BANDS x LSH_ROWS), every
  candidate verified on the exact shingle sets. Each row is compared only with the first
  LSH_MAX_COMPARE rows of each of its buckets, so the work stays O(rows x bands) even when
  many rows collide; a row similar only to later members of a crowded bucket can be missed.
  System messages are left out of the near-duplicate text: a shared system prompt would
  otherwise make every conversation a near-duplicate of every other.
Leakage: a validation row whose text is in training under any of the three.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from kubetune_api.protocol import DataQuality, QualityCode, QualityWarning, TokenLengths, data_quality_failure
from kubetune_trainer.data import Row, detect_format
from kubetune_trainer.errors import DataQualityFailed

# -- thresholds (docs/data.md#quality) ------------------------------------------------------------
TRUNCATED_SHARE_MAX = 0.05  # more than 5 % of rows cut at maxSeqLength warns
DROPPED_ROWS_MAX = 0  # any row left with no trainable token warns
DUPLICATE_SHARE_MAX = 0.01  # more than 1 % exact copies among training rows warns
NEAR_DUPLICATE_SHARE_MAX = 0.05  # more than 5 % near-duplicates among training rows warns
LEAKED_ROWS_MAX = 0  # any validation row also in training warns
EMPTY_ANSWERS_MAX = 0  # any answer with nothing to learn warns
MIN_TRAINABLE_TOKENS = 1_000  # fewer tokens with a label than this warns
# The maxSeqLength suggested for the 95th percentile is rounded up to a multiple of this (GPU
# kernels and packing like multiples of 64; finer steps would be noise in a percentile).
SEQ_LENGTH_STEP = 64

# -- near-duplicate method ------------------------------------------------------------------------
NEAR_DUPLICATE_JACCARD = 0.8
SHINGLE_WORDS = 3
NUM_PERMUTATIONS = 100
LSH_BANDS, LSH_ROWS = 20, 5  # 20 x 5 = NUM_PERMUTATIONS; a pair at Jaccard 0.8 is a candidate with p > 0.999
LSH_MAX_COMPARE = 8
_SEED = 20261203  # fixed: the same data gives the same report on every machine

_rng = np.random.default_rng(_SEED)
_A = _rng.integers(1, 2**63, NUM_PERMUTATIONS, dtype=np.uint64) | np.uint64(1)  # odd multipliers
_B = _rng.integers(0, 2**63, NUM_PERMUTATIONS, dtype=np.uint64)
_PUNCTUATION = re.compile(r"[^\w\s]|_")


@dataclass(frozen=True)
class CheckedRow:
    """One row as preparation saw it: its tokens before truncation and what truncation did."""

    row: Row
    tokens: int  # the whole rendered row, before truncation
    truncated: bool
    dropped: bool  # no trainable token left after truncation


@dataclass(frozen=True)
class QualityInputs:
    """Where the rows came from, for the spec fields and file:line examples in the warnings."""

    max_seq_length: int
    format: str  # the format the rows were read as
    row_formats: Sequence[tuple[str, str]] = ()  # (file:line, the format that row's keys show), every row
    validation_split: bool = False  # validation rows were split off dataset.train
    model_max_length: int | None = None  # the model's max_position_embeddings


def normalise(text: str) -> str:
    """NFKC, case-folded, punctuation to spaces, whitespace collapsed."""
    text = _PUNCTUATION.sub(" ", unicodedata.normalize("NFKC", text).casefold())
    return " ".join(text.split())


def _visible(text: str) -> bool:
    """Has a letter, digit or symbol (an emoji answer counts; '.', '-' and zero-width spaces do not)."""
    return any(unicodedata.category(ch)[0] in "LNS" for ch in text)


def _exact_key(row: Row) -> tuple[str, ...]:
    if row.is_chat:
        return tuple(part for m in row.messages for part in (m.role, m.content))
    return (row.prompt, row.completion)


def _normalised_key(row: Row) -> str:
    if row.is_chat:
        return "\n".join(f"{m.role} {normalise(m.content)}" for m in row.messages)
    return normalise(row.prompt) + "\n" + normalise(row.completion)


def _shingles(row: Row) -> frozenset[int]:
    if row.is_chat:
        text = " ".join(normalise(m.content) for m in row.messages if m.role != "system")
    else:
        text = normalise(row.prompt + " " + row.completion)
    words = text.split()
    grams = [" ".join(words[i : i + SHINGLE_WORDS]) for i in range(max(1, len(words) - SHINGLE_WORDS + 1))]
    return frozenset(zlib.crc32(g.encode()) for g in grams)


def minhash(shingles: frozenset[int]) -> np.ndarray:
    """NUM_PERMUTATIONS minima of multiply-shift hashes (Dietzfelbinger) of the shingles."""
    values = np.fromiter(shingles, dtype=np.uint64, count=len(shingles))
    with np.errstate(over="ignore"):  # arithmetic mod 2**64 is the point
        hashed = (values[:, None] * _A[None, :] + _B[None, :]) >> np.uint64(32)
    result: np.ndarray = hashed.min(axis=0)
    return result


def jaccard(a: frozenset[int], b: frozenset[int]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


class _NearIndex:
    """LSH over MinHash signatures: add rows, ask which indexed row a new one nearly repeats."""

    def __init__(self) -> None:
        self.buckets: dict[tuple[int, bytes], list[int]] = {}
        self.shingles: list[frozenset[int]] = []

    def _bands(self, shingles: frozenset[int]) -> list[tuple[int, bytes]]:
        signature = minhash(shingles)
        return [(band, signature[band * LSH_ROWS : (band + 1) * LSH_ROWS].tobytes()) for band in range(LSH_BANDS)]

    def find(self, shingles: frozenset[int], bands: list[tuple[int, bytes]] | None = None) -> int | None:
        """The first indexed row at Jaccard >= NEAR_DUPLICATE_JACCARD, verified on the shingle sets."""
        for key in bands if bands is not None else self._bands(shingles):
            for other in self.buckets.get(key, [])[:LSH_MAX_COMPARE]:
                if jaccard(shingles, self.shingles[other]) >= NEAR_DUPLICATE_JACCARD:
                    return other
        return None

    def add(self, shingles: frozenset[int]) -> int | None:
        """Index the row; return the earlier row it nearly repeats, if any."""
        bands = self._bands(shingles)
        match = self.find(shingles, bands)
        index = len(self.shingles)
        self.shingles.append(shingles)
        for key in bands:
            self.buckets.setdefault(key, []).append(index)
        return match


def row_formats(text: str, name: str) -> list[tuple[str, str]]:
    """(file:line, the format its keys show) for each row of a JSONL text that read_rows accepted.

    Per row, not from the first row as `format: auto` decides: a file that mixes formats shows it.
    """
    found: list[tuple[str, str]] = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            obj = json.loads(line)
            fmt = detect_format(obj) if isinstance(obj, dict) else None
            found.append((f"{name}:{lineno}", fmt.value if fmt is not None else "unknown"))
    return found


def percentile_lengths(tokens: Sequence[int]) -> TokenLengths:
    values = np.asarray(tokens)
    return TokenLengths(
        p50=math.ceil(np.percentile(values, 50)), p95=math.ceil(np.percentile(values, 95)), max=int(values.max())
    )


def suggested_max_seq_length(p95: int) -> int:
    return max(SEQ_LENGTH_STEP, math.ceil(p95 / SEQ_LENGTH_STEP) * SEQ_LENGTH_STEP)


def _answers(row: Row) -> Iterable[str]:
    if row.is_chat:
        return (m.content for m in row.messages if m.role == "assistant")
    return (row.completion,)


def _has_empty_answer(row: Row) -> bool:
    return any(not _visible(answer) for answer in _answers(row))


def _share(count: int, total: int) -> float:
    return round(count / total, 4) if total else 0.0


def _example(rows: Iterable[CheckedRow | Row]) -> str | None:
    first = next(iter(rows), None)
    if first is None:
        return None
    return first.row.source if isinstance(first, CheckedRow) else first.source


@dataclass
class _Duplicates:
    exact: list[tuple[Row, Row]]  # (row, the earlier row it repeats)
    near: list[tuple[Row, Row]]  # normalised-equal or MinHash near-duplicates
    leaked: list[tuple[Row, Row]]  # (validation row, the training row it repeats)


def find_duplicates(train: Sequence[Row], validation: Sequence[Row]) -> _Duplicates:
    exact_seen: dict[tuple[str, ...], Row] = {}
    normal_seen: dict[str, Row] = {}
    index = _NearIndex()
    indexed: list[Row] = []
    found = _Duplicates([], [], [])
    for row in train:
        key, normal = _exact_key(row), _normalised_key(row)
        if key in exact_seen:
            found.exact.append((row, exact_seen[key]))
            continue
        exact_seen[key] = row
        if normal in normal_seen:
            found.near.append((row, normal_seen[normal]))
            continue
        normal_seen[normal] = row
        match = index.add(_shingles(row))
        indexed.append(row)
        if match is not None:
            found.near.append((row, indexed[match]))
    for row in validation:
        key, normal = _exact_key(row), _normalised_key(row)
        same = exact_seen.get(key) or normal_seen.get(normal)
        if same is None and (match := index.find(_shingles(row))) is not None:
            same = indexed[match]
        if same is not None:
            found.leaked.append((row, same))
    return found


def data_quality(
    train: Sequence[CheckedRow], validation: Sequence[CheckedRow], trainable_tokens: int, inputs: QualityInputs
) -> DataQuality:
    """The report and its warnings. `trainable_tokens`: labelled tokens of the kept training rows."""
    every = [*train, *validation]
    truncated = [c for c in every if c.truncated]
    dropped = [c for c in every if c.dropped]
    empty_train = [c for c in train if _has_empty_answer(c.row)]
    empty = empty_train + [c for c in validation if _has_empty_answer(c.row)]
    duplicates = find_duplicates([c.row for c in train], [c.row for c in validation])
    formats = Counter(fmt for _, fmt in inputs.row_formats)
    report = DataQuality(
        train_lengths=percentile_lengths([c.tokens for c in train]),
        validation_lengths=percentile_lengths([c.tokens for c in validation]) if validation else None,
        rows=len(every),
        truncated_rows=len(truncated),
        truncated_share=_share(len(truncated), len(every)),
        dropped_rows=len(dropped),
        duplicate_rows=len(duplicates.exact),
        near_duplicate_rows=len(duplicates.near),
        leaked_validation_rows=len(duplicates.leaked),
        empty_answers=len(empty),
        rows_per_format=dict(sorted(formats.items())),
        trainable_tokens=trainable_tokens,
    )
    # Split-off validation rows are fixed in dataset.train; a validation file's own rows there.
    empty_field = "dataset.train" if empty_train or inputs.validation_split else "dataset.validation"
    report.warnings = _warnings(report, inputs, truncated, dropped, (empty, empty_field), duplicates, len(train))
    return report


def _warnings(
    report: DataQuality,
    inputs: QualityInputs,
    truncated: list[CheckedRow],
    dropped: list[CheckedRow],
    empty_and_field: tuple[list[CheckedRow], str],
    duplicates: _Duplicates,
    train_rows: int,
) -> list[QualityWarning]:
    warnings: list[QualityWarning] = []
    empty, empty_field = empty_and_field
    lengths = report.train_lengths
    fit = suggested_max_seq_length(lengths.p95)
    over_model = (
        f" (above the model's {inputs.model_max_length} positions: shorten the longest rows instead)"
        if inputs.model_max_length is not None and fit > inputs.model_max_length
        else ""
    )
    raise_to = f"training.maxSeqLength: {fit} would fit 95% of training rows (p95 {lengths.p95} tokens){over_model}"
    if report.truncated_share > TRUNCATED_SHARE_MAX:
        warnings.append(
            QualityWarning(
                code=QualityCode.TRUNCATED_ROWS,
                message=f"{report.truncated_rows} of {report.rows} rows ({report.truncated_share:.0%}) are longer "
                f"than training.maxSeqLength={inputs.max_seq_length} and are cut; {raise_to}",
                field="training.maxSeqLength",
                example=_example(truncated),
                value=report.truncated_share,
                threshold=TRUNCATED_SHARE_MAX,
            )
        )
    if report.dropped_rows > DROPPED_ROWS_MAX:
        warnings.append(
            QualityWarning(
                code=QualityCode.DROPPED_ROWS,
                message=f"{report.dropped_rows} rows lost every trainable token to truncation at "
                f"training.maxSeqLength={inputs.max_seq_length} and are not used (e.g. {_example(dropped)}); "
                f"{raise_to}, or shorten their prompts",
                field="training.maxSeqLength",
                example=_example(dropped),
                value=report.dropped_rows,
                threshold=DROPPED_ROWS_MAX,
            )
        )
    exact_share = _share(report.duplicate_rows, train_rows)
    if exact_share > DUPLICATE_SHARE_MAX:
        row, first = duplicates.exact[0]
        warnings.append(
            QualityWarning(
                code=QualityCode.DUPLICATE_ROWS,
                message=f"{report.duplicate_rows} training rows ({exact_share:.1%}) repeat an earlier row exactly "
                f"(e.g. {row.source} repeats {first.source}): the model trains on them more often than on the "
                "rest; remove the copies from dataset.train",
                field="dataset.train",
                example=row.source,
                value=exact_share,
                threshold=DUPLICATE_SHARE_MAX,
            )
        )
    near_share = _share(report.near_duplicate_rows, train_rows)
    if near_share > NEAR_DUPLICATE_SHARE_MAX:
        row, first = duplicates.near[0]
        warnings.append(
            QualityWarning(
                code=QualityCode.NEAR_DUPLICATE_ROWS,
                message=f"{report.near_duplicate_rows} training rows ({near_share:.1%}) nearly repeat an earlier row "
                f"(same text up to case and punctuation, or word 3-gram Jaccard >= {NEAR_DUPLICATE_JACCARD}; "
                f"e.g. {row.source} and {first.source}); deduplicate dataset.train",
                field="dataset.train",
                example=row.source,
                value=near_share,
                threshold=NEAR_DUPLICATE_SHARE_MAX,
            )
        )
    if report.leaked_validation_rows > LEAKED_ROWS_MAX:
        row, same = duplicates.leaked[0]
        where, fix = (
            (
                "dataset.validationSplit",
                "rows repeated in dataset.train land on both sides of the split; deduplicate it",
            )
            if inputs.validation_split
            else ("dataset.validation", "remove them from dataset.validation")
        )
        warnings.append(
            QualityWarning(
                code=QualityCode.VALIDATION_LEAKAGE,
                message=f"{report.leaked_validation_rows} validation rows are also in training (exactly, normalised "
                f"or near-duplicate; e.g. {row.source} and {same.source}), so evaluation overstates the model; {fix}",
                field=where,
                example=row.source,
                value=report.leaked_validation_rows,
                threshold=LEAKED_ROWS_MAX,
            )
        )
    if report.empty_answers > EMPTY_ANSWERS_MAX:
        warnings.append(
            QualityWarning(
                code=QualityCode.EMPTY_ANSWERS,
                message=f"{report.empty_answers} rows have a completion or assistant turn with no letter, digit or "
                f"symbol (e.g. {_example(empty)}): the model learns to answer with nothing; fix or remove them",
                field=empty_field,
                example=_example(empty),
                value=report.empty_answers,
                threshold=EMPTY_ANSWERS_MAX,
            )
        )
    if len(report.rows_per_format) > 1:
        odd = next((source for source, fmt in inputs.row_formats if fmt != inputs.format), None)
        counts = ", ".join(f"{n} {fmt}" for fmt, n in report.rows_per_format.items())
        warnings.append(
            QualityWarning(
                code=QualityCode.MIXED_FORMATS,
                message=f"the rows' keys show more than one format ({counts}); they were all read as "
                f"{inputs.format} (dataset.format), so the others' extra keys are ignored (e.g. {odd})",
                field="dataset.format",
                example=odd,
                value=len(report.rows_per_format),
                threshold=1,
            )
        )
    if report.trainable_tokens < MIN_TRAINABLE_TOKENS:
        warnings.append(
            QualityWarning(
                code=QualityCode.FEW_TRAINABLE_TOKENS,
                message=f"only {report.trainable_tokens} tokens carry a label after truncation (fewer than "
                f"{MIN_TRAINABLE_TOKENS}): too little to learn from; add rows to dataset.train"
                + (" or raise training.maxSeqLength" if report.truncated_rows else ""),
                field="dataset.train",
                value=report.trainable_tokens,
                threshold=MIN_TRAINABLE_TOKENS,
            )
        )
    return warnings


def enforce(quality: DataQuality | None, fail_on_warnings: bool) -> None:
    """preflight.failOnWarnings: raise DataQualityFailed listing the warnings, when there are any."""
    if fail_on_warnings and quality is not None and quality.warnings:
        raise DataQualityFailed(data_quality_failure([(str(w.code), w.message) for w in quality.warnings]))
