"""Label and field selectors as the Kubernetes API server parses them (the subset tests need)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any


class SelectorError(ValueError):
    """An unparsable selector; the API server answers 400 BadRequest."""


@dataclasses.dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        match self.op:
            case "=":
                return present and value in self.values
            case "!=":
                return not present or value not in self.values
            case "in":
                return present and value in self.values
            case "notin":
                return not present or value not in self.values
            case "exists":
                return present
            case "!":
                return not present
        raise AssertionError(self.op)


_SET_RE = re.compile(r"^(?P<key>[^\s!=(),]+)\s+(?P<op>in|notin)\s+\((?P<values>[^()]*)\)$")
_EQ_RE = re.compile(r"^(?P<key>[^\s!=(),]+)\s*(?P<op>==|=|!=)\s*(?P<value>[^\s!=(),]*)$")
_KEY_RE = re.compile(r"^(?P<neg>!?)\s*(?P<key>[^\s!=(),]+)$")


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside parentheses: ``a in (x,y),b`` → ``["a in (x,y)", "b"]``."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [part.strip() for part in parts if part.strip()]


def parse_label_selector(text: str | None) -> list[Requirement]:
    """Parse ``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``, ``k in (a,b)``, ``k notin (a,b)``; comma means AND."""
    requirements: list[Requirement] = []
    for part in _split_top_level(text or ""):
        if m := _SET_RE.match(part):
            values = frozenset(v.strip() for v in m["values"].split(",") if v.strip())
            requirements.append(Requirement(m["key"], m["op"], values))
        elif m := _EQ_RE.match(part):
            op = "!=" if m["op"] == "!=" else "="
            requirements.append(Requirement(m["key"], op, frozenset([m["value"]])))
        elif m := _KEY_RE.match(part):
            requirements.append(Requirement(m["key"], "!" if m["neg"] else "exists"))
        else:
            raise SelectorError(f"unable to parse requirement: {part!r}")
    return requirements


def labels_match(requirements: list[Requirement], obj: Mapping[str, Any]) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    return all(req.matches(labels) for req in requirements)


@dataclasses.dataclass(frozen=True)
class FieldRequirement:
    path: tuple[str, ...]
    negate: bool
    value: str

    def matches(self, obj: Mapping[str, Any]) -> bool:
        current: Any = obj
        for step in self.path:
            current = current.get(step) if isinstance(current, Mapping) else None
        text = "" if current is None else str(current)
        return (text != self.value) if self.negate else (text == self.value)


def parse_field_selector(text: str | None) -> list[FieldRequirement]:
    """Parse ``a.b=c``, ``a.b==c``, ``a.b!=c`` (comma = AND) for any dotted field path.

    The real server allows only a few fields per kind (``metadata.name``, ``metadata.namespace``,
    ``status.phase`` for pods, ...); the harness accepts any path, which is a superset.
    """
    requirements: list[FieldRequirement] = []
    for part in _split_top_level(text or ""):
        m = re.match(r"^(?P<path>[A-Za-z0-9_.]+)\s*(?P<op>==|=|!=)\s*(?P<value>.*)$", part)
        if not m:
            raise SelectorError(f"invalid field selector: {part!r}")
        requirements.append(FieldRequirement(tuple(m["path"].split(".")), m["op"] == "!=", m["value"].strip()))
    return requirements


def fields_match(requirements: list[FieldRequirement], obj: Mapping[str, Any]) -> bool:
    return all(req.matches(obj) for req in requirements)
