"""Answering: the decided target answers, or its fallbacks in turn (router/fallback.py), skipping targets
that are cooling down; each answer's tokens and dollars are metered. The answer is not shaped here (a hedge,
the failure-aware JSON): see router/stages/shaping.py."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from localmodel import Message
from policies import Decision, Policy, action
from router.completions import Completion
from router.cooldown import Cooldowns
from router.errors import APIError
from router.fallback import first_answer
from router.local_batch import GenerationBatcher
from router.metrics import Metrics
from router.model_worker import ModelWorker
from router.schemas import ChatCompletionRequest
from router.stages.admission import PromptLimit
from router.stages.scoring import Scored
from router.state import StateStore
from router.targets import Answerer, Asked, Chunks, LocalModelAccess, build_answerer

Spent = Callable[[int, float], None]
"""Told an answer's tokens (prompt and completion) and dollars once its usage is known."""


@dataclass(frozen=True)
class Answer:
    decision: Decision
    """Its target is the one that answered: the rule's, or a fallback."""
    body: Completion | None = None
    """The whole answer; None for a stream, or when no target answers (a refusal)."""
    chunks: Chunks | None = None
    fallback: str | None = None
    """The targets passed over and why (x-router-fallback), when a fallback answered."""
    passed: bool = False
    """The target's own Responses answer (POST /v1/responses passed through): `body` a Response object,
    `chunks` its events; never shaped."""
    raw: bytes | None = None
    """A passed answer's body as the target wrote it, byte for byte."""


class Answering:
    def __init__(
        self, policy: Policy, worker: ModelWorker, prompts: PromptLimit, store: StateStore, metrics: Metrics
    ) -> None:
        self.policy, self.metrics = policy, metrics
        self.writer = GenerationBatcher(
            worker.model,
            worker.run,
            policy.limits.max_local_answers,
            prompts.max_prompt_tokens,
            metrics.local_batch_rows.observe,
        )
        local = LocalModelAccess(worker.model, self.writer, prompts.check)
        self.targets: dict[str, Answerer] = {
            name: build_answerer(name, target, local) for name, target in policy.targets.items()
        }
        self.prices = {name: answerer.price for name, answerer in self.targets.items()}
        """Dollars per million tokens, input and output alike: what pick orders candidates by."""
        self.declared_fields = frozenset(
            f for answerer in self.targets.values() for f in answerer.extra_fields
        )
        """Request fields beyond OpenAI's that some target takes."""
        self.cooldowns = Cooldowns(store, {name: a.cooldown for name, a in self.targets.items()})

    async def answer(
        self,
        request: ChatCompletionRequest,
        asked: Asked,
        decision: Decision,
        spent: Spent | None,
        stream: bool,
        passthrough: dict[str, Any] | None = None,
    ) -> Answer:
        """`stream`: the target's chunks as it writes them, else its whole answer. `passthrough`: the fields
        of a Responses request, which a target that speaks that API gets as they are (the others answer
        `request`, its translation to chat)."""
        if not action(decision.action).generates:
            return Answer(decision)
        assert decision.target is not None
        order = self.order(request, decision)

        def passes(name: str) -> bool:
            return passthrough is not None and self.targets[name].speaks_responses

        if stream:

            async def opened(name: str) -> Chunks:  # a provider's chunks pass through untouched
                metered = functools.partial(self._meter, decision, name, spent)
                if passthrough is not None and passes(name):
                    return await self.targets[name].respond_stream(passthrough, metered)
                return await self.targets[name].stream(request, asked, metered)

            streamed = await first_answer(order, opened, self.cooldowns, self.metrics)
            answered = answered_by(decision, streamed.target)
            passed = passes(streamed.target)
            return Answer(answered, chunks=streamed.result, fallback=streamed.fallback, passed=passed)

        async def completed(name: str) -> tuple[Completion, bytes | None]:
            if passthrough is not None and passes(name):
                metered = functools.partial(self._meter, decision, name, spent)
                responded = await self.targets[name].respond(passthrough, metered)
                return responded.body, responded.content
            body = await self.targets[name].complete(request, asked)
            self._meter(decision, name, spent, body.get("usage"))
            return body, None

        whole = await first_answer(order, completed, self.cooldowns, self.metrics)
        (body, raw), answered = whole.result, answered_by(decision, whole.target)
        return Answer(answered, body=body, fallback=whole.fallback, passed=raw is not None, raw=raw)

    def order(self, request: ChatCompletionRequest, decision: Decision) -> list[str]:
        """The decided target, then its fallbacks; for a request that offers tools, only targets that take
        them, and a 400 when the decided one does not."""
        assert decision.target is not None
        first, fallbacks = decision.target, self.policy.targets[decision.target].fallbacks
        if not request.has_tools:
            return [first, *fallbacks]
        if not self.targets[first].takes_tools:
            raise APIError(
                400,
                f"This request offers tools, and the policy's rule '{decision.rule}' sends it to the target "
                f"'{first}', which does not take them (a local target takes them only with accepts_tools: "
                "true, and answers in text); send it without tools, or ask the router's operator for a rule "
                "that routes requests with tools (has_tools) to a target that takes them",
                param="tools",
                code="tools_not_supported",
            )
        return [first, *(name for name in fallbacks if self.targets[name].takes_tools)]

    def speaks_responses(self, target: str | None) -> bool:
        """Whether a Responses request passes through to `target` as it is."""
        return target is not None and self.targets[target].speaks_responses

    def _meter(
        self, decision: Decision, name: str, spent: Spent | None, usage: dict[str, int] | None
    ) -> None:
        """Tokens and dollars of an answer, told to `spent` too; for a pick, also what its dearest candidate
        would have cost."""
        if not usage:
            return
        prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
        cost = self.targets[name].cost(prompt, completion)
        self.metrics.used(name, prompt, completion, cost)
        if spent is not None:
            spent(prompt + completion, cost)
        if decision.confidences:
            dearest = max(self.targets[other].cost(prompt, completion) for other in decision.confidences)
            self.metrics.saved.inc(max(dearest - cost, 0.0))

    async def observe(self) -> None:
        """The targets' up gauges: 0 while a target cools down."""
        up = {name: int(await self.cooldowns.left(name) == 0) for name in self.targets}
        self.metrics.target_up.clear()  # a target a reload removed leaves no series behind
        for name, value in up.items():
            self.metrics.target_up.labels(name).set(value)

    async def close(self) -> None:
        await self.writer.close()  # its streams may outlast their requests
        for target in self.targets.values():
            await target.close()


def asked(request_id: str, messages: list[Message], scored: Scored | None) -> Asked:
    """A score computed just now has checked the prompt's length; its draft, if any, is the answer."""
    checked = scored is not None and not scored.cached
    return Asked(request_id, messages, scored.draft if scored else None, prompt_checked=checked)


def answered_by(decision: Decision, target: str) -> Decision:
    """The decision as answered by `target` (a fallback, perhaps): a pick's confidence is that target's."""
    if target == decision.target:
        return decision
    confidence = (decision.confidences or {}).get(target, decision.confidence)
    return dataclasses.replace(decision, target=target, confidence=confidence)
