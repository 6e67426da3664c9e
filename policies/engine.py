"""First-matching-rule evaluation. Confidence is asked for only when a rule needs it, so a rule that
routes on request fields alone costs no scoring."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from policies.actions import Decision, action
from policies.conditions import Condition, When
from policies.facts import Confidences, RequestFacts
from policies.schema import Policy

__all__ = ["Confidences", "Decision", "RequestFacts", "decide"]


async def decide(
    policy: Policy,
    facts: RequestFacts,
    confidence: Callable[[], Awaitable[Confidences]],
    thresholds: Mapping[int, float] | None = None,
    prices: Mapping[str, float] | None = None,
) -> Decision:
    """Return the first matching rule's decision; `confidence` is awaited at most once.

    `thresholds` replaces the `confidence_below` of rules by index (a budget-targeted threshold); `prices`
    orders a pick rule's candidates, cheapest first (dollars per million tokens, input and output alike).
    """
    known: Confidences | None = None
    for index, rule in enumerate(policy.rules):
        when = rule.when
        threshold = thresholds.get(index) if thresholds else None
        if not _all_match(when.unscored_conditions, when, facts, None, threshold):
            continue
        chosen = action(rule.action)
        if known is None and (chosen.needs_confidence or when.scored_conditions):
            known = await confidence()
        if not _all_match(when.scored_conditions, when, facts, known, threshold):
            continue
        return chosen.decide(policy, index, rule, known, prices or {})
    raise AssertionError("validated policies end with a catch-all rule")


def _all_match(
    conditions: tuple[type[Condition], ...],
    when: When,
    facts: RequestFacts,
    known: Confidences | None,
    threshold: float | None,
) -> bool:
    # A loop, not all() over a generator: a third faster, and it runs for every rule of every request.
    for condition in conditions:  # noqa: SIM110
        if not condition.matches(when, facts, known, threshold):
            return False
    return True
