"""`tool_names`: the request offers at least one tool of these names (a function's, a custom tool's, or a
legacy function's): `when: {tool_names: [run_sql]}`. A request without tools never matches."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from policies.conditions.base import Condition, Names, When

if TYPE_CHECKING:
    from policies.facts import Confidences, RequestFacts


class ToolNames(Condition, name="tool_names"):
    fields: ClassVar[dict[str, Any]] = {"tool_names": (Names, None)}

    @classmethod
    def matches(
        cls, when: When, facts: RequestFacts, known: Confidences | None, threshold: float | None
    ) -> bool:
        return any(name in when.tool_names for name in facts.tool_names)
