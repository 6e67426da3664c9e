"""Sessions: a conversation pinned to the target its first turn went to (the policy's `sessions:`), so that a
later turn is not answered by another model that never saw how the conversation went.

After deciding, before answering. A turn carries a session key (its header, its `user`, or the chain of
previous_response_id: the HTTP layer says which); the pin is `session:<tenant>:<digest of the key>` in the
shared store, so every replica reads the same one and no tenant can reach another's. The first turn's
decided target is written with set_if_absent: when two replicas take a session's first turns at once, one
wins and both answer from its target. A pin lasts `ttl_s` after the latest turn.

On a later turn the rule still decides the action (a hedge still hedges, a refusal still refuses, and a
refusal leaves the pin as it is); the pinned target answers in place of the rule's, except that with
`allow_escalation` a rule that escalates keeps its target, which the conversation is pinned to from then
on. A pinned target that a reload removed is replaced as on a first turn; one that cannot take the turn's
tools (a local target without accepts_tools) leaves this turn to the rule, the pin kept.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping

from policies import Decision, Policy, action
from policies.schema import NO_TENANT
from router.metrics import Metrics
from router.stages.answering import answered_by
from router.state import StateStore, StoreUnavailable

log = logging.getLogger("router")

SESSION_PREFIX = "session:"


def session_key(tenant: str | None, key: str) -> str:
    # A digest: the key is the client's text (a header, a user tag), never stored or logged as it came.
    return f"{SESSION_PREFIX}{tenant or NO_TENANT}:{hashlib.sha256(key.encode()).hexdigest()[:32]}"


class Sessions:
    def __init__(
        self, policy: Policy, store: StateStore, metrics: Metrics, takes_tools: Callable[[str], bool]
    ) -> None:
        """`takes_tools(target)`: whether that target may answer a request that offers tools."""
        self.spec, self.targets, self.store, self.metrics = policy.sessions, policy.targets, store, metrics
        self.takes_tools = takes_tools

    async def pin(
        self, decision: Decision, key: str | None, tenant: str | None, tools: bool
    ) -> tuple[Decision, str | None]:
        """The decision as the session has it answered, and x-router-session: `new` (this turn set the pin),
        `pinned` (the pinned target answers), or None (no session, or this turn is the rule's alone)."""
        answers = decision.target is not None and action(decision.action).generates
        if self.spec is None or key is None or not answers:
            return decision, None
        assert decision.target is not None
        stored, ttl_s = session_key(tenant, key), self.spec.ttl_s
        try:
            pinned = await self.store.get(stored)
            if pinned is None:
                if await self.store.set_if_absent(stored, decision.target, ttl_s):
                    return self._turn(decision, "new")
                pinned = await self.store.get(stored)  # another replica's first turn won
            if pinned is None or pinned not in self.targets:  # it expired just now, or a reload removed it
                await self.store.set(stored, decision.target, ttl_s)
                return self._turn(decision, "new")
            if tools and not self.takes_tools(pinned):
                return decision, None
            if pinned == decision.target:
                outcome = "pinned"
            elif self.spec.allow_escalation and decision.outcome == "escalate":
                pinned, outcome = decision.target, "escalated"
            else:
                decision, outcome = answered_by(decision, pinned), "overridden"
            await self.store.set(stored, pinned, ttl_s)  # the pin lasts ttl_s from this turn
        except StoreUnavailable:  # Redis away and the replay buffer full: the rule alone decides
            log.debug("sessions: the store cannot keep the pin; this turn is unpinned")
            return decision, None
        return self._turn(decision, outcome)

    def _turn(self, decision: Decision, outcome: str) -> tuple[Decision, str]:
        self.metrics.session_turns.labels(outcome).inc()
        return decision, "new" if outcome in ("new", "escalated") else "pinned"


def session_of(policy: Policy, headers: Mapping[str, str], user: str | None) -> str | None:
    """The session key of a request, as the policy's sessions.key says: its header or its `user`; None
    without one, or for `previous_response_id`, which POST /v1/responses finds itself."""
    spec = policy.sessions
    if spec is None or spec.key == "previous_response_id":
        return None
    return (headers.get(spec.header) if spec.key == "header" else user) or None
