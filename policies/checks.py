"""Checks of a policy that only layers above policies can make (scorers/checks.py: the scorer method and
its folder). They register here, so that policies imports none of those layers and `load_policy` still
reports every mistake with its file, line and field."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from policies.schema import Policy

Location = tuple[str | int, ...]
"""Where a problem is, as pydantic locates errors: field names and list indexes from the file's top."""
Problem = tuple[Location, str]
Check = Callable[["Policy"], Iterable[Problem]]

CHECKS: list[Check] = []


def policy_check(check: Check) -> Check:
    """Register `check`: load_policy runs it on every policy that passes schema validation (its relative
    paths resolved), after the policy's own checks."""
    CHECKS.append(check)
    return check


def registered_problems(policy: Policy) -> Iterator[Problem]:
    for check in CHECKS:
        yield from check(policy)
