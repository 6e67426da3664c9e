"""`answer_with: TARGET`: the rule's target answers, as it is."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from policies.actions.base import Action
from policies.checks import Location

if TYPE_CHECKING:
    from policies.views import PolicyView, RuleView


class AnswerWith(Action, name="answer_with"):
    outcome = "answer"
    takes = frozenset({"target"})

    @classmethod
    def problems(cls, policy: PolicyView, index: int, rule: RuleView) -> Iterator[tuple[Location, str]]:
        if rule.target is None:
            yield ("rules", index, "target"), f"{cls.name} needs a target"
        yield from super().problems(policy, index, rule)
