"""Validation errors as a person would write them: one formatter for every place a spec is checked.

`kubetune validate`, `kubetune run`, `kubetune-train` (trainer.json) and the operator's
InvalidSpec condition and Events all print pydantic errors through `describe_errors`, so
the same mistake reads the same everywhere:

    spec.training.learningrate: unknown field; did you mean learningRate?
    spec.training.epochs: must be an integer or 'auto', got 'many'
    spec.baseModel.uri: 'hf://org/llama' is not a supported URI: hf:// is not accepted ...

Each message names the field by its wire path (camelCase for manifests, snake_case for
trainer.json), which is why the formatter walks the model alongside pydantic's `loc`.
"""

from __future__ import annotations

import difflib
import re
import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from kubetune_api.spec import PATTERN_MEANINGS

_VALUE_ERROR = "Value error, "
_LITERAL_TAG = re.compile(r"^literal\[(.*)\]$")
_BRANCH_NAMES = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}


def describe_errors(exc: ValidationError, model: type[BaseModel], root: str = "", by_alias: bool = True) -> list[str]:
    """One line per problem, in input order; the branches of a union collapse into one line."""
    lines: list[str] = []
    unions: dict[str, list[ErrorDetails]] = {}
    for error in exc.errors():
        where = _locate(model, error["loc"], by_alias)
        path = ".".join(p for p in (root, where.path) if p).replace(".[", "[") or root or "(document)"
        if where.union_branch is not None:
            if path not in unions:
                unions[path] = []
                lines.append(path)  # placeholder, filled in below, keeps input order
            unions[path].append(error)
            continue
        lines.append(f"{path}: {_message(error, where)}")
    return [_union_message(line, unions[line]) if line in unions else line for line in lines]


def describe(exc: ValidationError, model: type[BaseModel], root: str = "", by_alias: bool = True) -> str:
    """The same, as one `; `-separated line (termination messages, conditions, Events)."""
    return "; ".join(describe_errors(exc, model, root, by_alias))


# -- walking the model along pydantic's loc ------------------------------------------------------


class _Where:
    def __init__(self) -> None:
        self.path = ""
        self.known_fields: list[str] = []  # the fields of the object an unknown key was found in
        self.union_branch: str | None = None


def _unwrap(annotation: Any) -> Any:
    """Annotated[X, ...] -> X; X | None -> X (a real union of several types is kept)."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
            continue
        if origin in (Union, types.UnionType):
            members = [arg for arg in get_args(annotation) if arg is not type(None)]
            if len(members) == 1:
                annotation = members[0]
                continue
        return annotation


def _field_names(model: type[BaseModel], by_alias: bool) -> dict[str, tuple[str, Any]]:
    """Every accepted spelling of each field -> (its wire name, its annotation)."""
    names: dict[str, tuple[str, Any]] = {}
    for name, info in model.model_fields.items():
        wire = (info.alias or name) if by_alias else name
        names[name] = names[wire] = (wire, info.annotation)
    return names


def _locate(model: type[BaseModel], loc: tuple[int | str, ...], by_alias: bool) -> _Where:
    where = _Where()
    parts: list[str] = []
    current: Any = model
    for item in loc:
        current = _unwrap(current)
        if isinstance(item, int):
            parts.append(f"[{item}]")
            args = get_args(current)
            current = args[0] if args else Any
        elif isinstance(current, type) and issubclass(current, BaseModel):
            fields = _field_names(current, by_alias)
            if item in fields:
                wire, current = fields[item]
                parts.append(wire)
            else:
                parts.append(item)
                where.known_fields = sorted({wire for wire, _ in fields.values()})
                current = Any
        elif get_origin(current) is dict:
            parts.append(item)
            current = get_args(current)[1]
        elif get_origin(current) in (Union, types.UnionType):
            where.union_branch = item  # pydantic names the branch it tried: 'int', "literal['auto']"
            break
        else:
            parts.append(item)
    where.path = ".".join(parts)
    return where


# -- wording -------------------------------------------------------------------------------------


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _message(error: ErrorDetails, where: _Where) -> str:
    kind, msg = error["type"], error["msg"]
    if kind == "extra_forbidden":
        key = where.path.rsplit(".", 1)[-1]
        return "unknown field" + _suggestion(key, where.known_fields)
    if kind == "missing":
        return "required field is missing"
    if msg.startswith(_VALUE_ERROR):
        return msg[len(_VALUE_ERROR) :]  # our own validators word their message in full
    if kind == "string_pattern_mismatch" and (error.get("ctx") or {}).get("pattern") in PATTERN_MEANINGS:
        return f"{PATTERN_MEANINGS[error['ctx']['pattern']]}, got {_shown(error.get('input'))}"
    if kind in ("literal_error", "enum"):
        return f"{msg}, got {_shown(error.get('input'))}"
    return f"{msg} (got {_shown(error.get('input'))})"


def _suggestion(key: str, known: list[str]) -> str:
    """`; did you mean learningRate?`, as kubectl suggests the nearest real field."""
    by_lower = {name.lower(): name for name in known}
    close = difflib.get_close_matches(key.lower(), list(by_lower), n=1, cutoff=0.6)
    return f"; did you mean {by_lower[close[0]]}?" if close else ""


def _union_message(path: str, errors: list[ErrorDetails]) -> str:
    """`epochs: 'many'` fails both `int` and `literal['auto']`: say what is accepted, once."""
    own = [e["msg"][len(_VALUE_ERROR) :] for e in errors if e["msg"].startswith(_VALUE_ERROR)]
    if own:
        return f"{path}: {own[0]}"
    accepted: list[str] = []
    for error in errors:
        tag = str(error["loc"][-1])
        literal = _LITERAL_TAG.match(tag)
        name = literal.group(1) if literal else _BRANCH_NAMES.get(tag, tag)
        if name not in accepted:
            accepted.append(name)
    alternatives = " or ".join(accepted)
    return f"{path}: must be {alternatives}, got {_shown(errors[0].get('input'))}"
