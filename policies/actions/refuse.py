"""`refuse`: no target answers; the client gets the rule's message, else the policy's refusal_message."""

from __future__ import annotations

from typing import TYPE_CHECKING

from policies.actions.base import Action, Decision

if TYPE_CHECKING:
    from policies.views import PolicyView


class Refuse(Action, name="refuse"):
    outcome = "refuse"
    generates = False
    takes = frozenset({"message"})

    @classmethod
    def default_message(cls, policy: PolicyView) -> str:
        return policy.refusal_message

    @classmethod
    def shape(cls, answer: str, decision: Decision) -> str:
        return decision.message or ""

    @classmethod
    def stream_prefix(cls, decision: Decision) -> str | None:
        return None
