"""First-matching-rule evaluation. Confidence is asked for only when a rule needs it, so a rule that
routes on request fields alone costs no scoring."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from policies.actions import Decision, action
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
        conditions = rule.when.conditions()
        threshold = (thresholds or {}).get(index)
        # Request fields first: a rule they rule out needs no score.
        if not all(
            c.matches(rule.when, facts, None, threshold) for c in conditions if not c.needs_confidence
        ):
            continue
        chosen = action(rule.action)
        if known is None and (chosen.needs_confidence or any(c.needs_confidence for c in conditions)):
            known = await confidence()
        if not all(c.matches(rule.when, facts, known, threshold) for c in conditions if c.needs_confidence):
            continue
        return chosen.decide(policy, index, rule, known, prices or {})
    raise AssertionError("validated policies end with a catch-all rule")
