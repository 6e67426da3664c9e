"""First-matching-rule evaluation. Confidence is asked for only when a rule needs it, so a rule that
routes on request fields alone costs no scoring."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from policies.schema import Action, Policy, Rule, When


@dataclass(frozen=True)
class RequestFacts:
    model: str
    user: str | None = None


@dataclass(frozen=True)
class Decision:
    action: Action
    target: str | None
    rule: str
    confidence: float | None
    message: str | None
    """The refusal text, or the hedge template with an {answer} slot."""
    rule_index: int

    @property
    def outcome(self) -> str:
        """What happened, in the words clients see: answer, escalate, hedge or refuse."""
        return {"answer_with": "answer", "escalate_to": "escalate"}.get(self.action, self.action)


def _matches_request(when: When, facts: RequestFacts) -> bool:
    if when.model is not None and facts.model not in when.model:
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


async def decide(
    policy: Policy,
    facts: RequestFacts,
    confidence: Callable[[], Awaitable[float]],
    thresholds: Mapping[int, float] | None = None,
) -> Decision:
    """Return the first matching rule's decision; `confidence` is awaited at most once.

    `thresholds` replaces the `confidence_below` of rules by index (a budget-targeted threshold).
    """
    known: float | None = None
    for index, rule in enumerate(policy.rules):
        if not _matches_request(rule.when, facts):
            continue
        if rule.when.needs_confidence:
            if known is None:
                known = await confidence()
            below = (thresholds or {}).get(index, rule.when.confidence_below)
            if not _matches_confidence(rule.when, known, below):
                continue
        return _decision(policy, index, rule, known)
    raise AssertionError("validated policies end with a catch-all rule")
