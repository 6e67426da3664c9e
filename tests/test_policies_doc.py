"""docs/policies.md's tables of conditions and actions against the registries: every `when:` field and
every action a policy may use is there, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

from policies.actions import ACTIONS
from policies.conditions import when_model

POLICIES_DOC = Path(__file__).parents[1] / "docs" / "policies.md"


def first_cells(header: str) -> list[str]:
    """The first cell of each row of the table whose first column is headed `header`."""
    cells: list[str] = []
    inside = False
    for line in POLICIES_DOC.read_text().splitlines():
        first = line.strip("|").split("|")[0].strip() if line.startswith("|") else None
        if first == header:
            inside = True
        elif first is None:
            inside = False
        elif inside and set(first) - set("-: "):
            cells.append(first)
    return cells


def test_the_conditions_table_names_every_when_field_and_no_other() -> None:
    named = {field for cell in first_cells("condition") for field in re.findall(r"`(\w+):", cell)}
    assert named == set(when_model().model_fields)


def test_the_actions_table_names_every_action_and_no_other() -> None:
    assert {cell.strip("`") for cell in first_cells("action")} == set(ACTIONS)
