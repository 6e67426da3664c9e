"""Deciding: the policy's first matching rule, with the escalation budget's thresholds in force and pick's
candidates ordered by price. The confidence is asked for only when a rule needs it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from policies import Confidences, Decision, Policy, RequestFacts, decide
from router.budget import EscalationBudget
from router.schemas import ChatCompletionRequest


class Deciding:
    def __init__(self, policy: Policy, budget: EscalationBudget, prices: Mapping[str, float]) -> None:
        """`prices`: each target's dollars per million tokens, input and output alike."""
        self.policy, self.budget, self.prices = policy, budget, prices

    async def decide(
        self,
        request: ChatCompletionRequest,
        tenant: str | None,
        confidences: Callable[[], Awaitable[Confidences]],
    ) -> Decision:
        """`tenant`: the caller's key name (None without auth), a fact rules can match."""
        facts = RequestFacts(request.model, request.user, tenant, request.has_tools, request.tool_names)
        thresholds = await self.budget.thresholds()
        return await decide(self.policy, facts, confidences, thresholds, self.prices)
