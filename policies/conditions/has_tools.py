"""`has_tools`: whether the request offers the model tools to call (`tools`, or the legacy `functions`):
`when: {has_tools: true}` sends tool use where it can be answered."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from policies.conditions.base import Condition, When

if TYPE_CHECKING:
    from policies.facts import Confidences, RequestFacts


class HasTools(Condition, name="has_tools"):
    fields: ClassVar[dict[str, Any]] = {"has_tools": (bool | None, None)}

    @classmethod
    def matches(
        cls, when: When, facts: RequestFacts, known: Confidences | None, threshold: float | None
    ) -> bool:
        return facts.has_tools is when.has_tools
