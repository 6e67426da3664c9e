"""`task`: the kind of request the scorer's task head sees is one of these (`when: {task: [chat]}`).

The family comes from the same forward pass as the confidences, so a rule that tests it scores the request.
A scorer without a task head reports none, and then the condition never matches (`router policy validate`
says so: scorers/checks.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from policies.checks import Location
from policies.conditions.base import Condition, Names, When
from policies.facts import TASK_FAMILIES

if TYPE_CHECKING:
    from policies.facts import Confidences, RequestFacts
    from policies.views import PolicyView, RuleView


class TaskFamily(Condition, name="task"):
    needs_confidence = True
    fields: ClassVar[dict[str, Any]] = {"task": (Names, None)}

    @classmethod
    def matches(
        cls, when: When, facts: RequestFacts, known: Confidences | None, threshold: float | None
    ) -> bool:
        assert known is not None, "needs_confidence: the engine scores before matching"
        return known.task is not None and known.task in when.task

    @classmethod
    def problems(cls, policy: PolicyView, index: int, rule: RuleView) -> Iterator[tuple[Location, str]]:
        for j, family in enumerate(rule.when.task or []):
            if family not in TASK_FAMILIES:
                known = ", ".join(TASK_FAMILIES)
                yield ("rules", index, "when", "task", j), f"'{family}' is not a task family (known: {known})"
