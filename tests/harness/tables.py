"""``kubectl get`` tables: the ``meta.k8s.io/v1`` Table a request with ``Accept: ...;as=Table`` gets.

kmock 0.8 has no Table rendering, and kubectl shows only names without it. The columns are ``Name`` plus the CRD's
``additionalPrinterColumns`` (name/type/format/description/priority; simple ``.a.b.c`` JSONPaths; missing → null;
``date`` → an age such as ``5m``, as kubectl prints it), a few built-in columns for pods, jobs and namespaces, and
``Age`` for anything else.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Mapping
from typing import Any

from .store import JOBS, NAMESPACES, PODS, ResKey


def parse_rfc3339(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def human_duration(seconds: float) -> str:
    """Go's ``duration.HumanDuration`` as kubectl shows ages: ``42s``, ``3m10s``, ``5h``, ``2d3h``."""
    if seconds < -1:
        return "<invalid>"
    s = max(int(seconds), 0)
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if days < 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    return f"{days}d" if days < 730 else f"{days // 365}y"


def json_path(obj: Mapping[str, Any], path: str) -> Any:
    """Evaluate the simple JSONPaths of printer columns (``.status.phase``); None when absent."""
    current: Any = obj
    for step in path.strip().lstrip("$").strip(".").split("."):
        if not step:
            continue
        if not isinstance(current, Mapping):
            return None
        current = current.get(step)
    return current


@dataclasses.dataclass(frozen=True)
class PrinterColumn:
    name: str
    type: str
    json_path: str
    format: str = ""
    description: str = ""
    priority: int = 0

    def definition(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "format": self.format,
            "description": self.description,
            "priority": self.priority,
        }

    def cell(self, obj: Mapping[str, Any]) -> Any:
        value = json_path(obj, self.json_path)
        if value is None:
            return None
        if self.type == "date":
            try:
                age = datetime.datetime.now(tz=datetime.UTC) - parse_rfc3339(str(value))
            except ValueError:
                return str(value)
            return human_duration(age.total_seconds())
        if self.type == "string":
            return value if isinstance(value, str) else json.dumps(value)
        return value


# Columns for built-in kinds (the real server has Go printers; these are a small, stable subset).
_AGE = PrinterColumn("Age", "date", ".metadata.creationTimestamp")
_BUILTIN_COLUMNS: dict[ResKey, list[PrinterColumn]] = {
    PODS: [
        PrinterColumn("Status", "string", ".status.phase"),
        _AGE,
        PrinterColumn("IP", "string", ".status.podIP", priority=1),
        PrinterColumn("Node", "string", ".spec.nodeName", priority=1),
    ],
    JOBS: [
        PrinterColumn("Completions", "integer", ".spec.completions"),
        PrinterColumn("Succeeded", "integer", ".status.succeeded"),
        PrinterColumn("Failed", "integer", ".status.failed"),
        _AGE,
    ],
    NAMESPACES: [PrinterColumn("Status", "string", ".status.phase"), _AGE],
}


def crd_columns(version: Mapping[str, Any]) -> list[PrinterColumn]:
    """The printer columns of one version of a CRD."""
    return [
        PrinterColumn(
            name=col["name"],
            type=col.get("type", "string"),
            json_path=col["jsonPath"],
            format=col.get("format", ""),
            description=col.get("description", ""),
            priority=int(col.get("priority", 0)),
        )
        for col in version.get("additionalPrinterColumns", [])
    ]


def builtin_columns(res: ResKey) -> list[PrinterColumn]:
    return _BUILTIN_COLUMNS.get(res) or [_AGE]


def table(columns: list[PrinterColumn], items: list[dict[str, Any]], rv: int) -> dict[str, Any]:
    """The Table for ``items``: a ``Name`` column, then ``columns``."""
    definitions = [
        {
            "name": "Name",
            "type": "string",
            "format": "name",
            "description": "Name must be unique within a namespace.",
            "priority": 0,
        },
        *(column.definition() for column in columns),
    ]
    rows = [
        {
            "cells": [obj["metadata"]["name"], *(column.cell(obj) for column in columns)],
            "object": {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj["metadata"],
            },
        }
        for obj in items
    ]
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": str(rv)},
        "columnDefinitions": definitions,
        "rows": rows,
    }
