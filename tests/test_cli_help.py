"""`router ... --help` reads well in an 80-column terminal: every command's help, the groups' and the root's,
fits the width, cuts nothing short and names each option in full."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from commands import app

WIDTH = 80


def tree(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Each command under `command` (itself first) and the words that invoke it."""
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from tree(sub, (*path, name))


COMMANDS = list(tree(typer.main.get_command(app)))


def option_names(command: Any) -> list[str]:
    return [
        name
        for param in command.params
        if param.param_type_name == "option" and not param.hidden
        for name in (*param.opts, *param.secondary_opts)
    ]


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(("router", *p)) for p, _ in COMMANDS])
def test_help_fits_80_columns_and_names_every_option_in_full(path: tuple[str, ...], command: Any) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], prog_name="router", env={"COLUMNS": str(WIDTH)})
    assert result.exit_code == 0, result.output
    help_text = result.output
    too_wide = [line for line in help_text.splitlines() if len(line) > WIDTH]
    assert not too_wide, f"lines over {WIDTH} columns:\n" + "\n".join(too_wide)
    assert "…" not in help_text
    cut = [line for line in help_text.splitlines() if line.endswith("...") and not line.startswith("Usage:")]
    assert not cut, "a command's line in the list is cut short:\n" + "\n".join(cut)
    # Descriptions keep at least half the width, so that they do not wrap a word or two per line: no text
    # (within a panel's borders, were there any) starts right of the middle.
    lines = [line for line in help_text.splitlines() if line.strip(" │")]
    squeezed = [line for line in lines if len(line) - len(line.lstrip(" │")) > WIDTH // 2]
    assert not squeezed, "text squeezed right of column 40:\n" + "\n".join(squeezed)
    missing = [
        name for name in option_names(command) if not re.search(rf"(?<![\w-]){name}(?![\w-])", help_text)
    ]
    assert not missing, f"options not shown in full: {missing}\n{help_text}"


def test_every_command_is_checked() -> None:
    """The walk reaches the groups' commands, not only the top level's."""
    paths = {" ".join(path) for path, _ in COMMANDS}
    assert {"serve", "policy explain", "keys create", "models pull", "train-answerer"} <= paths
