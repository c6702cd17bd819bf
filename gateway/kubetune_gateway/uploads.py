"""An uploaded training file, checked as the preflight checks it, before it is stored.

The rows go through the trainer's own parser (`kubetune_trainer.data.read_rows`: torch-free, an
import-linter contract keeps it so), so a file the API accepts is one the preflight accepts, and a
bad row is named by its line in the same words. Token counts need the model's tokenizer, so they
stay with the preflight Job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kubetune_api.spec import DatasetFormat
from kubetune_gateway.errors import invalid
from kubetune_trainer.data import read_rows
from kubetune_trainer.errors import DatasetInvalid

PURPOSE = "fine-tune"


@dataclass(frozen=True)
class CheckedFile:
    rows: int
    format: str


def check_purpose(purpose: str | None) -> str:
    if purpose is None:
        raise invalid("Missing required parameter: 'purpose'.", "purpose", "missing_required_parameter")
    if purpose != PURPOSE:
        raise invalid(
            f"Invalid value for 'purpose': {purpose!r}; this server stores training data only: use 'fine-tune'",
            "purpose",
            "invalid_value",
        )
    return purpose


def check_rows(path: Path, filename: str) -> CheckedFile:
    """Every row of the uploaded JSONL (gzip or not), or a 400 naming the bad lines."""
    try:
        rows, fmt = read_rows(path, DatasetFormat.AUTO, name=filename)
    except DatasetInvalid as exc:
        raise invalid(f"Invalid file format for fine-tuning: {exc}", "file", "invalid_file_format") from exc
    return CheckedFile(rows=len(rows), format=fmt.value)
