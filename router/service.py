"""The request path without HTTP: score, decide, answer, shape the response."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from policies import Decision, LiteLLMTarget, LocalTarget, Policy, RequestFacts, decide
from router import completions
from router.batcher import BatchLimits, MicroBatcher, Overloaded
from router.completions import Completion
from router.errors import APIError
from router.local_model import LocalModel, Message
from router.schemas import ChatCompletionRequest
from router.score_cache import ScoreCache
from router.scorers import Score, ScoreItem, build_scorer
from router.state import MemoryStore, StateStore
from router.upstream import LiteLLMUpstream

log = logging.getLogger("router")
T = TypeVar("T")


@dataclass(frozen=True)
class Routed:
    request_id: str
    decision: Decision
    body: Completion | None = None
    chunks: AsyncIterator[Completion] | None = None

    def headers(self) -> dict[str, str]:
        headers = {
            "x-router-request-id": self.request_id,
            "x-router-decision": self.decision.outcome,
            "x-router-target": self.decision.target or "none",
            "x-router-rule": self.decision.rule,
        }
        if self.decision.confidence is not None:
            headers["x-router-confidence"] = f"{self.decision.confidence:.4f}"
        return headers


async def _replay(chunks: Iterable[Completion]) -> AsyncIterator[Completion]:
    for chunk in chunks:
        yield chunk


@dataclass(frozen=True)
class Scored:
    score: Score
    cached: bool
    latency_ms: float


class Router:
    def __init__(self, policy: Policy, model: LocalModel, store: StateStore | None = None) -> None:
        self.policy, self.model = policy, model
        self.scorer = build_scorer(policy.scorer, model)
        spec = policy.scorer
        self.cache = (
            ScoreCache(store or MemoryStore(), self.scorer.version, spec.cache_ttl_s)
            if spec.cache_ttl_s
            else None
        )
        limits = BatchLimits(spec.batch.max_size, spec.batch.max_wait_ms, spec.batch.max_queue)
        self.batcher: MicroBatcher[ScoreItem, Score] = MicroBatcher(
            lambda items: self._on_model(self.scorer.score_batch, items),
            lambda item: sum(len(str(m.get("content") or "")) for m in item.messages),
            limits,
        )
        self.remote = {
            name: LiteLLMUpstream(name, target)
            for name, target in policy.targets.items()
            if isinstance(target, LiteLLMTarget)
        }
        # One thread owns the model: requests queue for it instead of fighting over the cores.
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")

    async def _on_model(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._model_thread, fn, *args)

    def _draft_tokens(self, request: ChatCompletionRequest | None, target: LocalTarget | None = None) -> int:
        cap = target.max_tokens if target else self.policy.scorer.max_draft_tokens
        return min(request.token_cap or cap, cap) if request else cap

    async def score(self, messages: list[Message], max_new_tokens: int | None = None) -> Scored:
        started = time.perf_counter()
        item = ScoreItem(messages, max_new_tokens or self.policy.scorer.max_draft_tokens)
        # Pre-generation scores do not depend on the draft length, so it stays out of their cache key.
        length_key = 0 if self.scorer.pre_generation else item.max_new_tokens
        cached = await self.cache.get(messages, length_key) if self.cache else None
        if cached is not None:
            return Scored(cached, True, 1000 * (time.perf_counter() - started))
        try:
            score = await self.batcher.submit(item)
        except Overloaded as exc:
            raise APIError(
                503, f"Overloaded: {exc}", type="overloaded", headers={"Retry-After": "1"}
            ) from exc
        if self.cache:
            await self.cache.put(messages, length_key, score)
        return Scored(score, False, 1000 * (time.perf_counter() - started))

    async def route(self, request: ChatCompletionRequest) -> Routed:
        if request.model not in self.policy.model_names:
            served = ", ".join(self.policy.model_names)
            message = f"The model '{request.model}' does not exist; this router serves: {served}"
            raise APIError(404, message, param="model", code="model_not_found")
        started = time.perf_counter()
        request_id = uuid.uuid4().hex
        scored: list[Score] = []

        async def confidence() -> float:
            scored.append((await self.score(request.plain_messages(), self._draft_tokens(request))).score)
            return scored[0].confidence

        decision = await decide(self.policy, RequestFacts(request.model, request.user), confidence)
        routed = await self._answer(request_id, request, decision, scored[0] if scored else None)
        log.info(
            "request=%s rule=%s decision=%s target=%s confidence=%s latency_ms=%.0f",
            request_id,
            decision.rule,
            decision.action,
            decision.target,
            "-" if decision.confidence is None else f"{decision.confidence:.3f}",
            1000 * (time.perf_counter() - started),
        )
        return routed

    async def _answer(
        self, request_id: str, request: ChatCompletionRequest, decision: Decision, score: Score | None
    ) -> Routed:
        if decision.action == "refuse":
            body = completions.completion(request_id, "router", decision.message or "", "stop")
        else:
            assert decision.target is not None
            target = self.policy.targets[decision.target]
            if isinstance(target, LocalTarget):
                body = await self._local(request_id, request, decision.target, target, score)
            else:
                upstream = self.remote[decision.target]
                plain = decision.action != "hedge" and not self.policy.failure_aware
                if request.stream and plain:  # pass the provider's chunks through untouched
                    return Routed(request_id, decision, chunks=await upstream.stream(request))
                body = await upstream.complete(request)
        if decision.action == "hedge":
            body = completions.hedge(body, decision.message or "{answer}")
        if self.policy.failure_aware:
            body = completions.failure_aware(body, decision)
        if request.stream:
            return Routed(
                request_id, decision, chunks=_replay(completions.stream_chunks(body, request.include_usage))
            )
        return Routed(request_id, decision, body=body)

    async def _local(
        self,
        request_id: str,
        request: ChatCompletionRequest,
        name: str,
        target: LocalTarget,
        score: Score | None,
    ) -> Completion:
        # The scored draft is the answer: the confidence is about exactly this text. Sampling parameters
        # do not apply to it for that reason.
        draft = score.draft if score is not None else None
        if draft is None:
            draft = await self._on_model(
                self.model.draft, request.plain_messages(), self._draft_tokens(request, target)
            )
        return completions.completion(
            request_id, name, draft.text, draft.finish_reason, draft.prompt_tokens, draft.completion_tokens
        )

    async def close(self) -> None:
        await self.batcher.close()
        self._model_thread.shutdown(wait=False, cancel_futures=True)
