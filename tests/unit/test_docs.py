"""The reference docs match the models: generated tables are current, hand-written tables name
exactly the enum members (a new phase or condition cannot go undocumented)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kubetune_api.docs import GENERATORS, render
from kubetune_api.status import ConditionType, Phase

ROOT = Path(__file__).resolve().parents[2]
GENERATED = [ROOT / "docs" / "operator.md", ROOT / "docs" / "trainer.md"]


@pytest.mark.parametrize("path", GENERATED, ids=lambda p: p.name)
def test_generated_tables_are_current(path: Path) -> None:
    text = path.read_text()
    assert render(text) == text, f"{path.relative_to(ROOT)} is out of date with the models: run `make docs`"


def test_every_generator_is_used_somewhere() -> None:
    used = {name for path in GENERATED for name in re.findall(r"<!-- generated: ([a-z-]+) -->", path.read_text())}
    assert used == set(GENERATORS), set(GENERATORS) ^ used


def _first_column(text: str, heading: str) -> list[str]:
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE)


def test_phase_and_condition_tables_name_every_member() -> None:
    text = (ROOT / "docs" / "operator.md").read_text()
    assert _first_column(text, "## Phases") == [str(p) for p in Phase]
    assert set(_first_column(text, "## Conditions")) == {str(c) for c in ConditionType}
