"""Generate the reference tables in docs/ from the models, so the docs cannot drift from the contract.

Each table lives in a markdown file between two markers, and is rewritten in place:

    <!-- generated: status-fields -->
    ...
    <!-- end generated: status-fields -->

    python -m kubetune_api.docs docs/operator.md docs/trainer.md          # rewrite (make docs)
    python -m kubetune_api.docs --check docs/operator.md docs/trainer.md  # exit 1 on drift (make crd-check)
"""

from __future__ import annotations

import argparse
import re
import sys
import types
from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from kubetune_api.protocol import FAILURES, PreflightReport, ProgressReport, RunSummary, TrainerPhase
from kubetune_api.status import FineTuneJobStatus


def _type_name(annotation: Any) -> str:
    """A short, reader-facing type: integer, string, [Condition], Phase, ..."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _type_name(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        members = [arg for arg in get_args(annotation) if arg is not type(None)]
        enums = [m for m in members if isinstance(m, type) and issubclass(m, StrEnum)]
        return _type_name(enums[0] if enums else members[0])
    if origin is list:
        return f"[{_type_name(get_args(annotation)[0])}]"
    if origin is Literal:
        return " \\| ".join(str(v) for v in get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, StrEnum):
        return annotation.__name__
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "object"
    names = {int: "integer", float: "number", str: "string", bool: "boolean", datetime: "time (RFC 3339)"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The model inside `X`, `X | None`, `list[X]` or `Annotated[...]`, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        inner = _nested_model(arg)
        if inner is not None:
            return inner
    return None


def _wire_name(model: type[BaseModel], name: str) -> str:
    return model.model_fields[name].alias or name


def field_rows(
    model: type[BaseModel], prefix: str = "", depth: int = 1, skip: frozenset[str] = frozenset()
) -> list[str]:
    """`| field | type | description |` rows, nested objects `depth` levels down (a.b, list[].c)."""
    rows = []
    for name, info in model.model_fields.items():
        wire = _wire_name(model, name)
        path = f"{prefix}{wire}"
        description = " ".join((info.description or "").split())
        rows.append(f"| `{path}` | {_type_name(info.annotation)} | {description} |")
        nested = _nested_model(info.annotation)
        if nested is not None and depth > 0 and wire not in skip:
            is_list = get_origin(_strip(info.annotation)) is list
            rows += field_rows(nested, f"{path}{'[]' if is_list else ''}.", depth - 1, skip)
    return rows


def _strip(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        members = [arg for arg in get_args(annotation) if arg is not type(None)]
        return members[0] if len(members) == 1 else annotation
    return annotation


def _table(header: str, rows: list[str]) -> str:
    columns = header.count("|") - 1
    return "\n".join([header, "|" + "---|" * columns, *rows])


def status_fields() -> str:
    rows = field_rows(FineTuneJobStatus, "status.", depth=1, skip=frozenset({"acceptedSpec"}))
    return _table("| Field | Type | Description |", rows)


def failure_reasons() -> str:
    rows = [
        f"| `{info.reason}` | {'' if info.exit_code is None else info.exit_code} | {info.kind} | "
        f"{'yes' if info.retryable else 'never'} | {info.advice} |"
        for info in FAILURES.values()
    ]
    return _table("| Reason | Trainer exit code | Kind | Retried | What to do |", rows)


def trainer_exit_codes() -> str:
    rows = [
        f"| {info.exit_code} | `{info.reason}` | {info.kind} | {'yes' if info.retryable else 'never'} | {info.advice} |"
        for info in sorted(FAILURES.values(), key=lambda i: i.exit_code or 0)
        if info.exit_code is not None
    ]
    return _table("| Exit | Reason | Kind | Retried by the operator | What to do |", rows)


def progress_fields() -> str:
    rows = field_rows(ProgressReport, depth=1)
    rows.append("| `progressRatio` | number | Fraction of planned steps done, 0..1 (computed). |")
    return _table("| Field | Type | Description |", rows)


def summary_fields() -> str:
    return _table("| Field | Type | Description |", field_rows(RunSummary, depth=0))


def preflight_fields() -> str:
    return _table("| Field | Type | Description |", field_rows(PreflightReport, depth=1))


def trainer_phases() -> str:
    return ", ".join(f"`{phase}`" for phase in TrainerPhase)


GENERATORS: dict[str, Callable[[], str]] = {
    "status-fields": status_fields,
    "failure-reasons": failure_reasons,
    "trainer-exit-codes": trainer_exit_codes,
    "progress-fields": progress_fields,
    "summary-fields": summary_fields,
    "preflight-fields": preflight_fields,
    "trainer-phases": trainer_phases,
}
_REGION = re.compile(r"(<!-- generated: ([a-z-]+) -->\n)(.*?)(<!-- end generated: \2 -->)", re.DOTALL)


def render(text: str) -> str:
    """`text` with every generated region rewritten (unknown region names are an error)."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(2)
        if name not in GENERATORS:
            raise KeyError(f"unknown generated region {name!r}; known: {', '.join(GENERATORS)}")
        return f"{match.group(1)}{GENERATORS[name]()}\n{match.group(4)}"

    return _REGION.sub(replace, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", type=Path, nargs="+", help="markdown files with generated regions")
    parser.add_argument("--check", action="store_true", help="exit 1 if a file differs from what would be generated")
    args = parser.parse_args(argv)
    stale = []
    for path in args.files:
        text = path.read_text()
        rendered = render(text)
        if rendered != text:
            stale.append(path)
            if not args.check:
                path.write_text(rendered)
    if args.check:
        for path in stale:
            print(f"{path} is out of date with the models: run `make docs`", file=sys.stderr)
        return 1 if stale else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
