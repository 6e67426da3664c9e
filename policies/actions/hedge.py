"""`hedge`: a target's answer inside a template that says it may be wrong (the rule's message, else the
policy's hedge_template); without a target, the policy's local target answers."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from policies.actions.base import Action, Decision
from policies.checks import Location

if TYPE_CHECKING:
    from policies.facts import Confidences
    from policies.views import PolicyView, RuleView

SLOT = "{answer}"


class Hedge(Action, name="hedge"):
    outcome = "hedge"
    takes = frozenset({"target", "message"})

    @classmethod
    def problems(cls, policy: PolicyView, index: int, rule: RuleView) -> Iterator[tuple[Location, str]]:
        yield from super().problems(policy, index, rule)
        if rule.target is None and policy.default_hedge_target is None:
            yield ("rules", index, "target"), "hedge needs a target when the policy has no local target"
        if rule.message is not None and SLOT not in rule.message:
            yield ("rules", index, "message"), f"a hedge message must contain {SLOT}"

    @classmethod
    def default_message(cls, policy: PolicyView) -> str:
        return policy.hedge_template

    @classmethod
    def decide(
        cls,
        policy: PolicyView,
        index: int,
        rule: RuleView,
        known: Confidences | None,
        prices: Mapping[str, float],
    ) -> Decision:
        decision = super().decide(policy, index, rule, known, prices)
        return decision if rule.target is not None else replace(decision, target=policy.default_hedge_target)

    @classmethod
    def shape(cls, answer: str, decision: Decision) -> str:
        # str.replace, not str.format: answers and templates may hold other braces.
        return (decision.message or SLOT).replace(SLOT, answer)

    @classmethod
    def stream_prefix(cls, decision: Decision) -> str | None:
        before, _, after = (decision.message or SLOT).partition(SLOT)
        return before if after == "" else None
