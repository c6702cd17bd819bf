"""Regenerate the values table of README.md from the "# --" comments in values.yaml.

    python charts/kubetune/generate_readme.py           # rewrite the table in README.md
    python charts/kubetune/generate_readme.py --check   # exit 1 if README.md is out of date (a test runs this)

A key with a "# --" comment right above it is one row (its whole value is the default, even a map); a key without
one must be a map whose children are documented.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
START = "<!-- values-table:start -->"
END = "<!-- values-table:end -->"
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.-]+):(?P<rest>.*)$")


def documented_values(text: str) -> dict[str, str]:
    """{"dotted.key": "description"} for every key with a "# --" comment, in file order."""
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    pending: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = [stripped[4:].strip()]
            continue
        if stripped.startswith("#") and pending is not None:
            pending.append(stripped[1:].strip())
            continue
        match = _KEY.match(line)
        if not match:
            if stripped:
                pending = None
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"]))
        if pending is not None:
            out[".".join(k for _, k in stack)] = " ".join(pending)
            pending = None
    return out


def _lookup(values: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        values = values[part]
    return values


def _default(value: Any) -> str:
    text = json.dumps(value, separators=(", ", ": "))
    return f"`{text}`"


def values_table(values_text: str) -> str:
    values = yaml.safe_load(values_text)
    rows = ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    for key, description in documented_values(values_text).items():
        value = _lookup(values, key)
        kind = {bool: "bool", int: "int", float: "float", str: "string", list: "list", dict: "object"}.get(
            type(value), type(value).__name__
        )
        description = description.replace("|", r"\|")
        rows.append(f"| `{key}` | {kind} | {_default(value)} | {description} |")
    return "\n".join(rows) + "\n"


def render_readme(readme: str, values_text: str) -> str:
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{values_table(values_text)}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md's values table is out of date")
    args = parser.parse_args(argv)
    readme_path = HERE / "README.md"
    readme = readme_path.read_text()
    wanted = render_readme(readme, (HERE / "values.yaml").read_text())
    if args.check:
        if readme != wanted:
            print(f"{readme_path}: the values table is out of date: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    readme_path.write_text(wanted)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
