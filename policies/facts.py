"""What a decision is made from: the request's own fields and, when a rule asks, its confidences."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

TASK_FAMILIES = ("qa", "choice", "passage", "math", "code", "instructions", "chat")
"""The kinds of request a scorer's task head tells apart (`when.task`; docs/default-scorer.md says what each
holds)."""

BEST = "best"
"""`when.confidence_of: best`: the highest confidence among the targets the scorer predicts."""


@dataclass(frozen=True)
class RequestFacts:
    model: str
    user: str | None = None
    tenant: str | None = None
    has_tools: bool = False
    """The request offers the model tools to call (`tools`, or the legacy `functions`)."""
    tool_names: tuple[str, ...] = ()
    """The names of the tools it offers, as the request lists them."""


@dataclass(frozen=True)
class Confidences:
    """One request's calibrated chances of a right answer."""

    primary: float
    """The scorer's primary target's: the local model's answer, for the scorers shipped."""
    by_target: Mapping[str, float] = field(default_factory=dict)
    """Policy target -> its confidence, for every target the scorer predicts."""
    task: str | None = None
    """The likeliest task family (one of TASK_FAMILIES), from a scorer with a task head; else None."""

    def of(self, name: str | None) -> float:
        if name is None:
            return self.primary
        if name == BEST:
            return max(self.by_target.values(), default=self.primary)
        return self.by_target[name]
