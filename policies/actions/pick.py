"""`pick`: the cheapest candidate at least `min_confidence` likely to be right answers; when none is, the
rule's fallback: the most likely candidate answers, or the router hedges or refuses.

Its decisions carry the action it chose (answer_with its cheapest candidate, escalate_to a dearer one,
hedge or refuse), so pick itself has no outcome, shape or stream prefix of its own.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from policies.actions.answer_with import AnswerWith
from policies.actions.base import Action, Decision, action
from policies.actions.escalate_to import EscalateTo
from policies.actions.hedge import SLOT
from policies.checks import Location

if TYPE_CHECKING:
    from policies.facts import Confidences
    from policies.views import PolicyView, RuleView


class Pick(Action, name="pick"):
    needs_confidence = True
    takes = frozenset({"candidates", "min_confidence", "message"})

    @classmethod
    def problems(cls, policy: PolicyView, index: int, rule: RuleView) -> Iterator[tuple[Location, str]]:
        where: Location = ("rules", index)
        if rule.min_confidence is None:
            yield (*where, "min_confidence"), "pick needs min_confidence"
        if not policy.candidates(rule):
            yield (*where, "candidates"), "pick needs candidates: no target is predicted by the scorer"
        for j, name in enumerate(rule.candidates or []):
            if name not in policy.targets:
                yield (
                    (*where, "candidates", j),
                    f"unknown target '{name}' (targets: {', '.join(policy.targets)})",
                )
            elif not policy.scored(name):
                yield (
                    (*where, "candidates", j),
                    f"the scorer predicts nothing for '{name}': map it to a scorer target in scorer.targets",
                )
        if rule.message is not None and rule.fallback == "most_likely":
            yield (*where, "message"), "pick takes a message only with fallback hedge or refuse"
        if rule.message is not None and rule.fallback == "hedge" and SLOT not in rule.message:
            yield (*where, "message"), f"a hedge message must contain {SLOT}"
        yield from super().problems(policy, index, rule)

    @classmethod
    def decide(
        cls,
        policy: PolicyView,
        index: int,
        rule: RuleView,
        known: Confidences | None,
        prices: Mapping[str, float],
    ) -> Decision:
        assert known is not None, "pick needs_confidence: the engine scores before deciding"
        # Stable: candidates priced alike keep the order the rule (or the policy) lists them in.
        ordered = sorted(policy.candidates(rule), key=lambda name: prices.get(name, 0.0))
        scores = {name: known.of(name) for name in ordered}
        threshold = rule.min_confidence if rule.min_confidence is not None else 0.0
        chosen = next((name for name in ordered if scores[name] >= threshold), None)
        message: str | None = None
        if chosen is not None or rule.fallback == "most_likely":
            if chosen is None:
                chosen = max(ordered, key=lambda name: scores[name])  # max keeps the first (cheapest) of ties
            decided = AnswerWith.name if chosen == ordered[0] else EscalateTo.name
        else:
            chosen = max(ordered, key=lambda name: scores[name])
            decided = rule.fallback
            message = rule.message or action(decided).default_message(policy)
        target = chosen if action(decided).generates else None
        return Decision(decided, target, policy.rule_label(index), scores[chosen], message, index, scores)
