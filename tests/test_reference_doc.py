"""docs/reference.md against the code it describes: its command table names every command, argument,
option and option's environment variable of the `router` command, and nothing that does not exist; its
response-header table is router/openapi.py's list, names and descriptions word for word."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main

from commands import app
from router.openapi import DECISION_HEADERS

REFERENCE = Path(__file__).parents[1] / "docs" / "reference.md"
ROOT = typer.main.get_command(app)
OPTION = re.compile(r"--[a-z0-9][a-z0-9-]*")
MENTION = re.compile(r"`(router(?:\s[^`]*)?)`")  # `router ...` in code spans, which may cross a line


def section(title: str) -> str:
    """The text under the `## title` heading, up to the next one."""
    text = REFERENCE.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : None if end == -1 else end]


def rows(text: str) -> list[list[str]]:
    """The cells of each row of the tables in `text`, without their header and separator rows."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return [
        row for row in cells if not set("".join(row)) <= set("-: ") and row[0] not in ("command", "header")
    ]


def tree(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from tree(sub, (*path, name))


COMMANDS = dict(tree(ROOT))


def options(command: Any) -> dict[str, str | None]:
    """Each option name of `command` (a flag's `--no-` form too) -> its environment variable."""
    return {
        name: param.envvar
        for param in command.params
        if param.param_type_name == "option" and not param.hidden
        for name in (*param.opts, *param.secondary_opts)
    }


def arguments(command: Any) -> list[str]:
    return [param.name for param in command.params if param.param_type_name == "argument"]


def resolve(words: list[str]) -> tuple[tuple[str, ...], list[str]]:
    """The command path the words after `router` name, and the words left after it."""
    path: tuple[str, ...] = ()
    while words and words[0] in getattr(COMMANDS[path], "commands", {}):
        path, words = (*path, words[0]), words[1:]
    return path, words


def documented() -> dict[tuple[str, ...], list[str]]:
    """Each row of the command table: the command it names -> its cells."""
    table: dict[tuple[str, ...], list[str]] = {}
    for row in rows(section("Command line")):
        [invocation] = MENTION.findall(row[0])
        path, rest = resolve(invocation.split()[1:])
        assert all(word.rstrip(".").isupper() for word in rest), f"{row[0]}: no such command"
        assert path not in table, f"{row[0]} is in the table twice"
        table[path] = row
    return table


def test_the_command_table_has_a_row_for_every_command_and_no_other() -> None:
    with_options = {path for path, command in COMMANDS.items() if options(command)}
    leaves = {path for path, command in COMMANDS.items() if not getattr(command, "commands", None)}
    assert set(documented()) == leaves | with_options


@pytest.mark.parametrize("path", sorted(documented()), ids=lambda path: " ".join(("router", *path)))
def test_each_row_names_the_commands_arguments_options_and_variables(path: tuple[str, ...]) -> None:
    command, row = COMMANDS[path], documented()[path]
    invocation = MENTION.findall(row[0])[0].split()
    assert len(invocation) - 1 - len(path) == len(arguments(command)), f"{row[0]}: its arguments"
    named = set(OPTION.findall(" ".join(row))) - {"--help"}
    assert named == set(options(command)), f"{row[0]}: options in the docs != options of the command"
    for option, variable in options(command).items():
        if variable is not None:
            assert f"`{option}` (`{variable}`)" in row[1], f"{row[0]}: {option} reads {variable}"


def test_every_command_and_option_the_reference_names_exists() -> None:
    text = REFERENCE.read_text()
    for mention in MENTION.findall(text):
        path, rest = resolve(mention.split()[1:])
        named_more = bool(rest) and rest[0].islower() and not rest[0].startswith("-")
        assert not (named_more and getattr(COMMANDS[path], "commands", None)), f"`{mention}`: no such command"
        unknown = set(OPTION.findall(mention)) - set(options(COMMANDS[path])) - {"--help"}
        assert not unknown, f"`{mention}`: `router {' '.join(path)}` has no {sorted(unknown)}"
    every_option = {name for command in COMMANDS.values() for name in options(command)} | {"--help"}
    assert set(OPTION.findall(section("Command line"))) <= every_option


def test_the_header_table_is_the_codes_list_of_headers() -> None:
    table = [(name.strip("`"), value) for name, value in rows(section("Response headers"))]
    assert table == [(name, header["description"]) for name, header in DECISION_HEADERS.items()]
