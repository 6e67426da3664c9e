"""The request path without HTTP, in named stages (router/stages/): admission, scoring, deciding, sessions,
answering, shaping, recording, capturing, and exploring after it, off the path. `Router` builds them for one
policy and runs a request through them."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from localmodel import LocalModel, Message
from policies import Policy
from router.metrics import Metrics
from router.model_worker import ModelWorker
from router.schemas import ChatCompletionRequest
from router.stages import answering
from router.stages.admission import Admission, PromptLimit
from router.stages.answering import Answering, Spent
from router.stages.capturing import Capturing
from router.stages.deciding import Deciding
from router.stages.exploring import Exploring
from router.stages.recording import Recording
from router.stages.scoring import LazyScore, Scored, Scoring
from router.stages.sessions import Sessions
from router.stages.shaping import Routed, Shaping
from router.state import MemoryStore, StateStore


class Router:
    def __init__(
        self,
        policy: Policy,
        model: LocalModel,
        store: StateStore | None = None,
        metrics: Metrics | None = None,
        worker: ModelWorker | None = None,
    ) -> None:
        """`worker`: the thread that owns `model`, when another router made it (see `reloaded`)."""
        self.policy, self.model = policy, model
        self.store, self.metrics = store or MemoryStore(), metrics or Metrics()
        self.worker = worker or ModelWorker(model)
        self._owns_worker = worker is None
        prompts = PromptLimit(policy, self.worker)
        self.scoring = Scoring(policy, self.worker, self.store, self.metrics, prompts.check)
        self.answering = Answering(policy, self.worker, prompts, self.store, self.metrics)
        self.admission = Admission(policy, self.answering.declared_fields)
        self.recording = Recording(policy, self.store, self.metrics, self.scoring)
        self.deciding = Deciding(policy, self.recording.budget, self.answering.prices)
        self.shaping = Shaping(policy)
        takes_tools = {name: answerer.takes_tools for name, answerer in self.answering.targets.items()}
        self.sessions = Sessions(policy, self.store, self.metrics, takes_tools.__getitem__)
        writer, targets = self.answering.writer, self.answering.targets
        self.exploring = Exploring(policy, targets, writer, self.store, self.metrics)
        self.capturing = Capturing(policy, self.store, self.metrics, self.scoring.predicts, self.exploring)
        self.scorer = self.scoring.scorer
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def route(
        self,
        request: ChatCompletionRequest,
        tenant: str | None = None,
        spent: Spent | None = None,
        *,
        feedback: bool = False,
        session: str | None = None,
        passthrough: dict[str, Any] | None = None,
    ) -> Routed:
        """`tenant`: the caller's key name (None without auth); `spent(tokens, dollars)` is told what the
        answer cost once its usage is known (for a stream, at its end); `feedback`: the client asks to give
        feedback on this answer (x-router-feedback: keep), so its decision is kept; `session`: the key of
        the conversation it is a turn of, for the policy's sessions:; `passthrough`: the Responses request
        that `request` translates, which targets speaking that API get as it is."""
        self.admission.admit(request)
        request_id, messages = uuid.uuid4().hex, request.plain_messages()
        score = LazyScore(self.scoring, messages, request.token_cap, tenant)
        decision = await self.deciding.decide(request, tenant, score.confidences)
        decision, pinned = await self.sessions.pin(decision, session, tenant, request.has_tools)
        started, asked = time.perf_counter(), answering.asked(request_id, messages, score.result)
        if passthrough is not None and self.answering.speaks_responses(decision.target):
            streams = request.stream  # passed on as written: nothing of the router's is written around it
        else:
            streams = self.shaping.streams(request, decision)
        answer = await self.answering.answer(request, asked, decision, spent, streams, passthrough)
        routed = dataclasses.replace(self.shaping.shape(request, request_id, answer), session=pinned)
        routed = await self.recording.record(routed, score.result, tenant, started, asked=feedback)
        return await self.capturing.capture(routed, messages, score.result, tenant, request, asked)

    async def score(
        self, messages: list[Message], max_new_tokens: int | None = None, *, cached: bool = True
    ) -> Scored:
        """A conversation's score outside routing (/v1/score, `router policy explain`)."""
        self.admission.check_count(len(messages))
        return await self.scoring.score(messages, max_new_tokens, cached=cached)

    async def reloaded(self, policy: Policy) -> Router:
        """A router for a new policy on this one's model and worker. It is built on the worker's thread, so
        loading an adapter never races a forward pass, and it takes the worker over."""
        if policy.scorer.model != self.policy.scorer.model:
            raise ValueError(
                f"scorer.model changed ('{self.policy.scorer.model}' -> '{policy.scorer.model}'): "
                "a different model needs a restart"
            )
        successor = await self.worker.run(Router, policy, self.model, self.store, self.metrics, self.worker)
        self._owns_worker, successor._owns_worker = False, True
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
        """Set the gauges computed from the shared windows and the targets' cooldowns."""
        await self.answering.observe()
        await self.recording.observe()

    async def close(self) -> None:
        """After a reload: waits for this router's requests in flight, then stops its stages."""
        await self._idle.wait()
        await self.exploring.close()  # before the targets it asks close
        await self.scoring.close()
        await self.answering.close()  # its streams may outlast their requests' turn in `in_use`
        if self._owns_worker:
            self.worker.close()
