"""First-matching-rule evaluation. Confidence is asked for only when a rule needs it, so a rule that
routes on request fields alone costs no scoring."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from policies.schema import BEST, Action, Policy, Rule, When


@dataclass(frozen=True)
class RequestFacts:
    model: str
    user: str | None = None
    tenant: str | None = None


@dataclass(frozen=True)
class Confidences:
    """One request's calibrated chances of a right answer."""

    primary: float
    """The scorer's primary target's: the local model's answer, for the scorers shipped."""
    by_target: Mapping[str, float] = field(default_factory=dict)
    """Policy target -> its confidence, for every target the scorer predicts."""

    def of(self, name: str | None) -> float:
        if name is None:
            return self.primary
        if name == BEST:
            return max(self.by_target.values(), default=self.primary)
        return self.by_target[name]


@dataclass(frozen=True)
class Decision:
    action: Action
    """Never `pick`: a pick rule decides answer_with (its cheapest candidate), escalate_to (a dearer one),
    hedge or refuse."""
    target: str | None
    rule: str
    confidence: float | None
    """The answering target's, for a pick rule; else the confidence the rule tested (the primary's)."""
    message: str | None
    """The refusal text, or the hedge template with an {answer} slot."""
    rule_index: int
    confidences: Mapping[str, float] | None = None
    """A pick rule's candidates and their confidences, cheapest first."""

    @property
    def outcome(self) -> str:
        """What happened, in the words clients see: answer, escalate, hedge or refuse."""
        return {"answer_with": "answer", "escalate_to": "escalate"}.get(self.action, self.action)


def _matches_request(when: When, facts: RequestFacts) -> bool:
    if when.model is not None and facts.model not in when.model:
        return False
    if when.tenant is not None and facts.tenant not in when.tenant:
        return False
    return when.user is None or facts.user in when.user


def _matches_confidence(when: When, confidence: float, below: float | None) -> bool:
    if below is not None and not confidence < below:
        return False
    return when.confidence_at_least is None or confidence >= when.confidence_at_least


def _decision(policy: Policy, index: int, rule: Rule, confidence: float | None) -> Decision:
    message = rule.message
    if message is None and rule.action == "refuse":
        message = policy.refusal_message
    if message is None and rule.action == "hedge":
        message = policy.hedge_template
    target = rule.target
    if rule.action == "hedge" and target is None:
        target = policy.default_hedge_target
    return Decision(rule.action, target, policy.rule_label(index), confidence, message, index)


def _pick(
    policy: Policy, index: int, rule: Rule, known: Confidences, prices: Mapping[str, float]
) -> Decision:
    """The cheapest candidate at least `min_confidence` likely to be right; else the rule's fallback."""
    ordered = sorted(
        policy.candidates(rule), key=lambda name: prices.get(name, 0.0)
    )  # stable: ties keep order
    scores = {name: known.of(name) for name in ordered}
    threshold = rule.min_confidence if rule.min_confidence is not None else 0.0
    chosen = next((name for name in ordered if scores[name] >= threshold), None)
    action: Action
    if chosen is not None or rule.fallback == "most_likely":
        if chosen is None:
            chosen = max(ordered, key=lambda name: scores[name])  # max keeps the first (cheapest) of ties
        action = "answer_with" if chosen == ordered[0] else "escalate_to"
        message = None
    else:
        chosen = max(ordered, key=lambda name: scores[name])
        action = rule.fallback
        default = policy.hedge_template if action == "hedge" else policy.refusal_message
        message = rule.message or default
    label = policy.rule_label(index)
    target = None if action == "refuse" else chosen
    return Decision(action, target, label, scores[chosen], message, index, scores)


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
        if not _matches_request(rule.when, facts):
            continue
        if (rule.when.needs_confidence or rule.action == "pick") and known is None:
            known = await confidence()
        if rule.when.needs_confidence:
            assert known is not None
            below = (thresholds or {}).get(index, rule.when.confidence_below)
            if not _matches_confidence(rule.when, known.of(rule.when.confidence_of), below):
                continue
        if rule.action == "pick":
            assert known is not None
            return _pick(policy, index, rule, known, prices or {})
        tested = None if known is None else known.of(rule.when.confidence_of)
        return _decision(policy, index, rule, tested)
    raise AssertionError("validated policies end with a catch-all rule")
