"""The request path without HTTP: score, decide, answer, shape the response."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

import calibrators
from localmodel import Aborted, Draft, LocalModel, Message
from policies import Confidences, Decision, LocalTarget, Policy, RequestFacts, decide
from router import completions
from router.batcher import BatchLimits, MicroBatcher, Overloaded
from router.budget import WINDOW, EscalationBudget
from router.completions import Completion
from router.cooldown import Cooldowns
from router.drift import DriftMonitor
from router.errors import APIError
from router.fallback import first_answer
from router.feedback import TRAFFIC_RETAINED, DecisionLog, Judged, calibration_stats
from router.local_batch import GenerationBatcher
from router.metrics import CALIBRATION_WINDOWS, Metrics
from router.schemas import ChatCompletionRequest
from router.score_cache import ScoreCache
from router.state import MemoryStore, StateStore
from router.targets import Answerer, Asked, Chunks, LocalModelAccess, build_answerer, check_fields, replay
from scorers import RawScore, ScoreItem, ScorerSettings, build_scorer, calibrate

log = logging.getLogger("router")
T = TypeVar("T")
Spent = Callable[[int, float], None]
"""Told an answer's tokens (prompt and completion) and dollars once its usage is known."""


@dataclass(frozen=True)
class Routed:
    request_id: str
    decision: Decision
    """Its target is the one that answered: the rule's, or a fallback."""
    body: Completion | None = None
    chunks: Chunks | None = None
    fallback: str | None = None
    """The targets passed over and why (x-router-fallback), when a fallback answered."""

    def headers(self) -> dict[str, str]:
        headers = {
            "x-router-request-id": self.request_id,
            "x-router-decision": self.decision.outcome,
            "x-router-target": self.decision.target or "none",
            "x-router-rule": self.decision.rule,
        }
        if self.decision.confidence is not None:
            headers["x-router-confidence"] = f"{self.decision.confidence:.4f}"
        if self.decision.confidences is not None:
            listed = self.decision.confidences.items()
            headers["x-router-confidences"] = ",".join(f"{name}={value:.4f}" for name, value in listed)
        if self.fallback is not None:
            headers["x-router-fallback"] = self.fallback
        return headers


@dataclass(frozen=True)
class Scored:
    raw: dict[str, float]
    """Scorer target (a model) -> raw score."""
    confidence: dict[str, float]
    """Scorer target -> calibrated confidence."""
    draft: Draft | None
    cached: bool
    latency_ms: float


class Router:
    def __init__(
        self,
        policy: Policy,
        model: LocalModel,
        store: StateStore | None = None,
        metrics: Metrics | None = None,
        model_thread: ThreadPoolExecutor | None = None,
    ) -> None:
        """`model_thread`: the worker that owns `model`, when another router made it (see `reloaded`)."""
        self.policy, self.model = policy, model
        self.store, self.metrics = store or MemoryStore(), metrics or Metrics()
        spec = policy.scorer
        settings = ScorerSettings(
            Path(spec.adapter) if spec.adapter else None, spec.samples, spec.temperature
        )
        self.scorer = build_scorer(spec.method, model, settings)
        # A policy's calibrator (e.g. fitted on feedback) replaces the scorer folder's own.
        self.calibrators = dict(self.scorer.calibrators)
        if spec.calibrator:
            self.calibrators[self.scorer.primary] = calibrators.load(spec.calibrator)
        self.predicts = self._predicted_targets()
        """Policy target -> the scorer target (model) whose confidence is its chance of a right answer."""
        self.cache = (
            ScoreCache(self.store, self.scorer.version, spec.cache_ttl_s) if spec.cache_ttl_s else None
        )
        limits = BatchLimits(spec.batch.max_size, spec.batch.max_wait_ms, spec.batch.max_queue)
        self.batcher: MicroBatcher[ScoreItem, RawScore] = MicroBatcher(
            lambda items: self._on_model(self.scorer.score_batch, items),
            lambda item: sum(len(str(m.get("content") or "")) for m in item.messages),
            limits,
            self.metrics.batch_ran,
        )
        self.metrics.queue_capacity.set(limits.max_queue)
        self.writer = GenerationBatcher(
            model,
            self._on_model,
            policy.limits.max_local_answers,
            self._prompt_token_limit(),
            self.metrics.local_batch_rows.observe,
        )
        local = LocalModelAccess(model, self._on_model, self.writer, self._check_prompt)
        self.targets: dict[str, Answerer] = {
            name: build_answerer(name, target, local) for name, target in policy.targets.items()
        }
        self.declared_fields = frozenset(f for a in self.targets.values() for f in a.extra_fields)
        """Request fields beyond OpenAI's that some target takes (their extra_fields)."""
        self.prices = {name: answerer.price for name, answerer in self.targets.items()}
        """Dollars per million tokens, input and output alike: what pick orders candidates by."""
        self.cooldowns = Cooldowns(self.store, {name: a.cooldown for name, a in self.targets.items()})
        drift = policy.monitoring.drift
        retained = max(TRAFFIC_RETAINED, drift.reference_size, drift.window)
        self.log = DecisionLog(self.store, policy.monitoring, self.scorer.version, retained)
        self.drift = DriftMonitor(self.store, self.log, drift, self.scorer.reference_scores)
        self.budget = EscalationBudget(policy, self.log, self.calibrate)
        # One thread owns the model: requests queue for it instead of fighting over the cores.
        self._owns_model_thread = model_thread is None
        self._model_thread = model_thread or ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        # Counting a long prompt's tokens takes milliseconds: neither the event loop nor the model waits.
        self._text_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")
        self.max_prompt_tokens = self._prompt_token_limit()
        # Each token is at least one byte and a character at most four bytes, so a prompt below this many
        # characters fits without being counted.
        self._framing = len(model.prompt_text([{"role": "user", "content": ""}]).encode())
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        """The primary target's raw scores to confidences, with the calibrator in force."""
        return calibrate(self.scorer.primary, raw, self.calibrators)

    def confidences(self, raw: dict[str, float]) -> dict[str, float]:
        return {
            target: float(calibrate(target, [value], self.calibrators)[0]) for target, value in raw.items()
        }

    def _predicted_targets(self) -> dict[str, str]:
        mapped = dict(self.policy.scorer.targets)
        for name, target in self.policy.targets.items():
            if isinstance(target, LocalTarget):
                mapped.setdefault(name, self.scorer.primary)
        unknown = {name: model for name, model in mapped.items() if model not in self.scorer.targets}
        if unknown:
            raise ValueError(
                f"scorer.targets: the scorer predicts {', '.join(self.scorer.targets)}, not {unknown}"
            )
        return mapped

    async def reloaded(self, policy: Policy) -> Router:
        """A router for a new policy on this one's model and model thread. It is built on that thread, so
        loading an adapter never races a forward pass, and it takes the thread over."""
        if policy.scorer.model != self.policy.scorer.model:
            raise ValueError(
                f"scorer.model changed ('{self.policy.scorer.model}' -> '{policy.scorer.model}'): "
                "a different model needs a restart"
            )
        successor = await self._on_model(
            Router, policy, self.model, self.store, self.metrics, self._model_thread
        )
        self._owns_model_thread, successor._owns_model_thread = False, True
        return successor

    @asynccontextmanager
    async def in_use(self) -> AsyncIterator[Router]:
        """Counts requests in flight, so that a replaced router closes only once they are done."""
        self._in_flight += 1
        self._idle.clear()
        try:
            yield self
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def observe_windows(self) -> None:
        """Set the gauges computed from the shared windows: rolling calibration, drift, escalation; and
        the targets' cooldowns."""
        up = {name: int(await self.cooldowns.left(name) == 0) for name in self.targets}
        self.metrics.target_up.clear()  # a target a reload removed leaves no series behind
        for name, value in up.items():
            self.metrics.target_up.labels(name).set(value)
        records = await self.log.feedback_window(max(CALIBRATION_WINDOWS))
        for window in CALIBRATION_WINDOWS:
            self.metrics.calibrated(window, calibration_stats(records[-window:]))
        self.metrics.drifted(await self.drift.check())
        outcomes = [outcome for outcome, _ in await self.log.traffic()][-WINDOW:]
        ratio = outcomes.count("escalate") / len(outcomes) if outcomes else math.nan
        self.metrics.escalation_ratio.set(ratio)
        threshold = self.budget.threshold
        self.metrics.escalation_threshold.set(math.nan if threshold is None else threshold)

    async def _on_model(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn` on the model's worker; if the caller is cancelled, the job stops at its next layer."""
        abort = threading.Event()
        job = asyncio.get_running_loop().run_in_executor(
            self._model_thread, self.model.run_abortable, abort, fn, *args
        )
        try:
            return await job
        except asyncio.CancelledError:
            abort.set()
            raise
        except Aborted as exc:  # not this caller's cancellation: the server is closing
            raise APIError(
                503, "The server is shutting down", type="service_unavailable", headers={"Retry-After": "1"}
            ) from exc

    def _prompt_token_limit(self) -> int:
        """The policy's limit, within what the model can read beside the longest answer it may write."""
        longest = max(
            [self.policy.scorer.max_draft_tokens]
            + [t.max_tokens for t in self.policy.targets.values() if isinstance(t, LocalTarget)]
        )
        return min(self.policy.limits.max_prompt_tokens, self.model.context_length - longest)

    def _check_length(self, messages: int) -> None:
        if messages > self.policy.limits.max_messages:
            raise APIError(
                400,
                f"Too many messages: {messages}; this router takes at most "
                f"{self.policy.limits.max_messages} (policy limits.max_messages)",
                param="messages",
                code="too_many_messages",
            )

    async def _check_prompt(self, messages: list[Message]) -> None:
        """A prompt the local model reads must fit `max_prompt_tokens`: it bounds one job's time."""
        characters = sum(len(str(m.get("content") or "")) for m in messages)
        if 4 * characters + self._framing * (len(messages) + 1) <= self.max_prompt_tokens:
            return
        length = "far too long"  # more characters than the limit's tokens could hold: no need to count
        if characters <= self.max_prompt_tokens * self.model.max_token_chars:
            loop = asyncio.get_running_loop()
            tokens = await loop.run_in_executor(self._text_thread, self.model.prompt_tokens, messages)
            if tokens <= self.max_prompt_tokens:
                return
            length = f"{tokens} tokens long"
        raise APIError(
            400,
            f"This conversation is {length}; the local model reads at most {self.max_prompt_tokens} tokens "
            "(policy limits.max_prompt_tokens)",
            param="messages",
            code="context_length_exceeded",
        )

    def _draft_tokens(self, request: ChatCompletionRequest) -> int:
        """The client's token cap, within the scorer's for drafts."""
        cap = self.policy.scorer.max_draft_tokens
        return min(request.token_cap or cap, cap)

    async def score(
        self,
        messages: list[Message],
        max_new_tokens: int | None = None,
        *,
        cached: bool = True,
        tenant: str | None = None,
    ) -> Scored:
        """`cached=False` neither reads nor writes the shared score cache (see /v1/score); each tenant has
        a cache of its own, so that no caller can tell by the latency what another asked."""
        started = time.perf_counter()
        self._check_length(len(messages))
        cap = self.policy.scorer.max_draft_tokens
        item = ScoreItem(messages, min(max_new_tokens or cap, cap))
        # Pre-generation scores do not depend on the draft length, so it stays out of their cache key.
        length_key = 0 if self.scorer.pre_generation else item.max_new_tokens
        cache = self.cache if cached else None
        hit = await cache.get(messages, length_key, tenant) if cache else None
        if hit is not None:
            return self._scored(hit, True, started)
        await self._check_prompt(messages)
        try:
            score = await self.batcher.submit(item)
        except Overloaded as exc:
            raise APIError(
                503, f"Overloaded: {exc}", type="overloaded", headers={"Retry-After": "1"}
            ) from exc
        if cache:
            await cache.put(messages, length_key, score, tenant)
        return self._scored(score, False, started)

    def _scored(self, score: RawScore, cached: bool, started: float) -> Scored:
        elapsed = time.perf_counter() - started
        self.metrics.scoring_seconds.labels("hit" if cached else "miss").observe(elapsed)
        # Only raw scores are cached: a reload with a new calibrator applies to cached scores at once.
        return Scored(score.raw, self.confidences(score.raw), score.draft, cached, 1000 * elapsed)

    def _known(self, scored: Scored) -> Confidences:
        by_target = {name: scored.confidence[model] for name, model in self.predicts.items()}
        for name, confidence in by_target.items():
            self.metrics.target_confidence.labels(name).observe(confidence)
        return Confidences(scored.confidence[self.scorer.primary], by_target)

    async def route(
        self,
        request: ChatCompletionRequest,
        tenant: str | None = None,
        spent: Spent | None = None,
    ) -> Routed:
        """`tenant`: the caller's key name (None without auth), a fact rules can match; `spent(tokens,
        dollars)` is told what the answer cost once its usage is known (for a stream, at its end)."""
        if request.model not in self.policy.model_names:
            served = ", ".join(self.policy.model_names)
            message = f"The model '{request.model}' does not exist; this router serves: {served}"
            raise APIError(404, message, param="model", code="model_not_found")
        check_fields(request, self.declared_fields)  # unknown fields: a 400 before any model work
        self._check_length(len(request.messages))
        started = time.perf_counter()
        request_id = uuid.uuid4().hex
        scored: list[Scored] = []

        async def confidence() -> Confidences:
            messages = request.plain_messages()
            scored.append(await self.score(messages, self._draft_tokens(request), tenant=tenant))
            return self._known(scored[0])

        facts = RequestFacts(request.model, request.user, tenant)
        thresholds = await self.budget.thresholds()
        decision = await decide(self.policy, facts, confidence, thresholds, self.prices)
        answering = time.perf_counter()
        routed = await self._answer(request_id, request, decision, scored[0] if scored else None, spent)
        decision = routed.decision  # the answering target's, when a fallback answered
        try:
            if decision.target is not None:
                elapsed = time.perf_counter() - answering
                self.metrics.upstream_seconds.labels(decision.target).observe(elapsed)
            self.metrics.decided(decision)
            await self._record(request_id, decision, scored[0] if scored else None, tenant)
        except BaseException:  # cancelled (the client left) or failed: an opened stream must not linger
            if routed.chunks is not None:
                await routed.chunks.aclose()
            raise
        # DEBUG: over HTTP the request's one INFO line (router/asgi.py) says the same from its headers.
        log.debug(
            "request=%s rule=%s decision=%s target=%s confidence=%s latency_ms=%.0f",
            request_id,
            decision.rule,
            decision.action,
            decision.target,
            "-" if decision.confidence is None else f"{decision.confidence:.3f}",
            1000 * (time.perf_counter() - started),
        )
        return routed

    async def _record(
        self, request_id: str, decision: Decision, scored: Scored | None, tenant: str | None
    ) -> None:
        """Feedback joins with the answering target's score where the scorer predicts that target, else
        with the primary's; the traffic window keeps the primary's raw score (drift and the budget)."""
        if scored is None:
            await self.log.record(request_id, decision, None, tenant=tenant)
            return
        model = self.predicts.get(decision.target or "", self.scorer.primary)
        judged = Judged(model, scored.raw[model], scored.confidence[model])
        await self.log.record(request_id, decision, scored.raw[self.scorer.primary], judged, tenant)

    async def _answer(
        self,
        request_id: str,
        request: ChatCompletionRequest,
        decision: Decision,
        scored: Scored | None,
        spent: Spent | None,
    ) -> Routed:
        fallback = None
        if decision.action == "refuse":
            body = completions.completion(request_id, "router", decision.message or "", "stop")
        else:
            assert decision.target is not None
            # A score computed just now has checked the prompt's length; its draft, if any, is the answer.
            checked = scored is not None and not scored.cached
            asked = Asked(request_id, scored.draft if scored else None, prompt_checked=checked)
            order = [decision.target, *self.policy.targets[decision.target].fallbacks]
            if request.stream and decision.action != "hedge" and not self.policy.failure_aware:

                async def opened(name: str) -> Chunks:  # a provider's chunks pass through untouched
                    metered = functools.partial(self._meter, decision, name, spent)
                    return await self.targets[name].stream(request, asked, metered)

                streamed = await first_answer(order, opened, self.cooldowns, self.metrics)
                decision = _answered_by(decision, streamed.target)
                return Routed(request_id, decision, chunks=streamed.result, fallback=streamed.fallback)

            async def completed(name: str) -> Completion:
                body = await self.targets[name].complete(request, asked)
                self._meter(decision, name, spent, body.get("usage"))
                return body

            answered = await first_answer(order, completed, self.cooldowns, self.metrics)
            decision = _answered_by(decision, answered.target)
            body, fallback = answered.result, answered.fallback
        answerer = getattr(self.policy.targets.get(decision.target or ""), "answerer", None)
        if decision.action == "hedge" and answerer is None:  # an answerer's JSON says it is unsure itself
            body = completions.hedge(body, decision.message or "{answer}")
        if self.policy.failure_aware:
            body = completions.failure_aware(body, decision, stated=answerer is not None)
        if request.stream:
            chunks = replay(completions.stream_chunks(body, request.include_usage))
            return Routed(request_id, decision, chunks=chunks, fallback=fallback)
        return Routed(request_id, decision, body=body, fallback=fallback)

    def _cost(self, name: str, prompt_tokens: int, completion_tokens: int) -> float:
        return self.targets[name].cost(prompt_tokens, completion_tokens)

    def _meter(
        self, decision: Decision, name: str, spent: Spent | None, usage: dict[str, int] | None
    ) -> None:
        """Tokens and dollars of an answer, told to `spent` too; for a pick, also what its dearest candidate
        would have cost."""
        if not usage:
            return
        prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
        cost = self._cost(name, prompt, completion)
        self.metrics.used(name, prompt, completion, cost)
        if spent is not None:
            spent(prompt + completion, cost)
        if decision.confidences:
            dearest = max(self._cost(other, prompt, completion) for other in decision.confidences)
            self.metrics.saved.inc(max(dearest - cost, 0.0))

    async def close(self) -> None:
        """After a reload: waits for this router's requests in flight, then stops its batcher."""
        await self._idle.wait()
        await self.batcher.close()
        await self.writer.close()  # its streams may outlast their requests' turn in `in_use`
        for target in self.targets.values():
            await target.close()
        self._text_thread.shutdown(wait=False, cancel_futures=True)
        if self._owns_model_thread:
            self._model_thread.shutdown(wait=False, cancel_futures=True)


def _answered_by(decision: Decision, target: str) -> Decision:
    """The decision as answered by `target` (a fallback, perhaps): a pick's confidence is that target's."""
    if target == decision.target:
        return decision
    confidence = (decision.confidences or {}).get(target, decision.confidence)
    return dataclasses.replace(decision, target=target, confidence=confidence)
