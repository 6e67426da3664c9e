"""`confidence_below` / `confidence_at_least`: the request's confidence lies in [at_least, below).

`confidence_of` says whose confidence the bounds test: a target the scorer predicts, `best` (the highest
of them), or by default the scorer's primary target (the local model's answer). Alone it tests nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from policies.checks import Location
from policies.conditions.base import Condition, When
from policies.facts import BEST

if TYPE_CHECKING:
    from policies.facts import Confidences, RequestFacts
    from policies.views import PolicyView, RuleView


class ConfidenceBounds(Condition, name="confidence"):
    needs_confidence = True
    fields: ClassVar[dict[str, Any]] = {
        "confidence_below": (float | None, Field(None, ge=0, le=1)),
        "confidence_at_least": (float | None, Field(None, ge=0, le=1)),
        "confidence_of": (str | None, None),
    }

    @classmethod
    def given(cls, when: When) -> bool:
        return when.confidence_below is not None or when.confidence_at_least is not None

    @classmethod
    def matches(
        cls, when: When, facts: RequestFacts, known: Confidences | None, threshold: float | None
    ) -> bool:
        assert known is not None, "needs_confidence: the engine scores before matching"
        confidence = known.of(when.confidence_of)
        below = when.confidence_below if threshold is None else threshold
        if below is not None and not confidence < below:
            return False
        return when.confidence_at_least is None or confidence >= when.confidence_at_least

    @classmethod
    def problems(cls, policy: PolicyView, index: int, rule: RuleView) -> Iterator[tuple[Location, str]]:
        where: Location = ("rules", index, "when")
        of = rule.when.confidence_of
        if of is not None and of != BEST and not policy.scored(of):
            yield (
                (*where, "confidence_of"),
                f"'{of}' is not a target the scorer predicts (map it in scorer.targets, or use '{BEST}')",
            )
        low, high = rule.when.confidence_at_least, rule.when.confidence_below
        if low is not None and high is not None and low >= high:
            yield where, f"confidence_at_least {low} >= confidence_below {high}: never matches"
