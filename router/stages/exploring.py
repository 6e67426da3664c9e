"""Exploring: shadow answers for a share of the captured requests (the policy's `explore:`), so that a
captured row says what each candidate target would have answered, not only the one that answered.

Once the client has its whole answer (capturing hands the row over: a whole answer as it is shaped, a
stream when it has ended), the request waits in a bounded queue of this replica for one of `concurrency`
workers, which asks every candidate that did not answer the client, one after the other, and then has the
row written with every answer that came. Nothing here is on the request path: handing over never waits
(a full queue drops the exploration, counted, and the row is written with the client's answer alone). A
refusal is not explored: the policy decided that no target should answer that request.

Shadow answers cost dollars of their own, metered apart from the client's (`router_explore_dollars`, never
a tenant's spend or limits) and capped per UTC day across replicas by one Redis counter per day: a
candidate is asked only while the day's total is below `budget_usd_per_day`, and its cost is added once
it has answered. A replica reads that total and adds to it at most a second late (`SYNC_S`), and replicas
asking at once may each pass the check, so the day may end over the cap by the answers in flight
(`concurrency` per replica) and about a second of each replica's shadow spend. With Redis away no priced
candidate is asked: the total cannot be read, and spending blind is what the cap is there to prevent. A
candidate that costs nothing (the local model, a target priced at 0) is asked whatever the day's total.

The local model answers the client's requests too, so a local candidate is asked one at a time per
replica, and only when the local writer has a free turn: it never waits for one ahead of a client.

Closing (a reload, shutdown) stops the workers at once: the rows they were exploring, and those still
queued, are written with the answers that came.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from policies import Policy
from policies.schema import ExploreSpec
from router import completions
from router.completions import Completion
from router.metrics import Metrics
from router.schemas import ChatCompletionRequest
from router.state import StateStore
from router.targets import Answerer, Asked

if TYPE_CHECKING:  # the batcher imports the model, which `router traffic` and `policy validate` must not load
    from router.local_batch import GenerationBatcher

log = logging.getLogger("router")

ANSWER_TIMEOUT_S = 120.0
"""Bounds one shadow answer, a local one waiting for its turn included (remote targets' timeout_s apply
within it)."""
FREE_TURN_POLL_S = 0.05
BUDGET_PREFIX = "explore:spent:"
BUDGET_TTL_S = 2 * 86400
"""A day's total outlives its day, for whoever reads it the next morning, and then goes."""
SYNC_S = 1.0
"""How stale a replica's view of the day's shadow spend may be, both ways (see DailyBudget)."""

_SPEND = """
local total = redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return total
"""

Keep = Callable[[dict[str, str]], Awaitable[None]]
"""Writes the row with the shadow answers given (candidate target -> text); never raises."""


def explored(request_id: str, share: float) -> bool:
    """Whether a captured request is in the share: a hash of its id, salted so that this share is drawn
    apart from capture's own (every replica would say the same)."""
    drawn = hashlib.sha256(f"explore:{request_id}".encode()).digest()[:8]
    return int.from_bytes(drawn, "big") < share * 2**64


def budget_key(day: datetime | None = None) -> str:
    """The store key of a UTC day's shadow spend (today's by default)."""
    return f"{BUDGET_PREFIX}{(day or datetime.now(UTC)).strftime('%Y-%m-%d')}"


@dataclass(eq=False)
class Job:
    candidates: list[str]
    request: ChatCompletionRequest
    asked: Asked
    keep: Keep
    shadow: dict[str, str] = field(default_factory=dict)


class DailyBudget:
    """The day's shadow spend, shared by every replica through Redis; unknown (so spent) without it.

    Each replica keeps a view of the day's total, read from Redis at most every `sync_s`, and adds what it
    spent at most `sync_s` late (at once where that reaches the cap): two round trips a shadow answer cost
    the gateway as much again as the answer's own call (docs/benchmarks.md)."""

    def __init__(
        self, store: StateStore, limit: float, prefix: str = "confidence-router:", sync_s: float = SYNC_S
    ) -> None:
        self.store, self.limit, self.prefix, self.sync_s = store, limit, prefix, sync_s
        self.client: Any = getattr(store, "client", None)
        self._spend = self.client.register_script(_SPEND) if self.client is not None else None
        self._key = ""
        self._total, self._read_at, self._added_at = 0.0, -math.inf, -math.inf
        """The day's total as Redis last told it, when, and when this replica last added to it."""
        self._owed = 0.0
        """Dollars spent here and not yet added to the shared total (Redis away, or within `sync_s`)."""

    async def allows(self) -> bool:
        if self.client is None or not self.store.health().up:
            return False
        key = self._today()
        if time.monotonic() - self._read_at >= self.sync_s:
            try:
                self._seen(await self.client.get(key))
            except Exception as exc:
                self._went_down(exc)
                return False
        return self._total + self._owed < self.limit

    async def spend(self, dollars: float) -> None:
        self._today()
        self._owed += dollars
        if time.monotonic() - self._added_at >= self.sync_s or self._total + self._owed >= self.limit:
            await self.settle()

    async def settle(self) -> None:
        """Add what this replica owes to the shared total now."""
        if self._owed <= 0 or self._spend is None:
            return
        try:
            total = await self._spend([self._today()], [repr(self._owed), BUDGET_TTL_S])
        except Exception as exc:
            self._went_down(exc)
            return
        self._owed, self._added_at = 0.0, time.monotonic()
        self._seen(total)

    def _today(self) -> str:
        """Today's key; on a new UTC day the view of yesterday's total is forgotten."""
        key = self.prefix + budget_key()
        if key != self._key:
            self._key, self._total, self._read_at, self._added_at = key, 0.0, -math.inf, -math.inf
        return key

    def _seen(self, total: Any) -> None:
        self._total, self._read_at = float(total or 0), time.monotonic()

    def _went_down(self, exc: Exception) -> None:
        report = getattr(self.store, "report_unreachable", None)
        if report is None:
            raise exc
        report(exc)  # raises what is not an outage (a programming error)


class Exploring:
    def __init__(
        self,
        policy: Policy,
        answerers: dict[str, Answerer],
        writer: GenerationBatcher,
        store: StateStore,
        metrics: Metrics,
    ) -> None:
        """`answerers`, `writer`: answering's (router/stages/answering.py), so a shadow answer is asked as the
        client's would be, the local ones in the same batches."""
        self.spec: ExploreSpec | None = policy.explore
        self.answerers, self.writer, self.metrics = answerers, writer, metrics
        self.turns = policy.limits.max_local_answers
        self.budget = DailyBudget(store, self.spec.budget_usd_per_day) if self.spec is not None else None
        self._queue: asyncio.Queue[Job] = asyncio.Queue(self.spec.queue if self.spec is not None else 1)
        self._workers: list[asyncio.Task[None]] = []
        self._writing: set[asyncio.Task[None]] = set()
        """Workers writing a row: closing lets them finish it."""
        self._local = asyncio.Lock()
        self._closed = False

    def wants(self, request_id: str) -> bool:
        return self.spec is not None and explored(request_id, self.spec.share)

    def submit(
        self, answered_by: str | None, request: ChatCompletionRequest, asked: Asked, keep: Keep
    ) -> bool:
        """Queue the candidates that did not answer (`answered_by`) for a shadow answer; False, without
        waiting, when the request is not explored (the queue is full, the router closing, no candidate
        left, a refusal): the caller then writes the row itself."""
        assert self.spec is not None
        candidates = [name for name in self.spec.targets if name != answered_by]
        # A refused request goes to no target: the policy decided that none should answer it.
        if self._closed or not candidates or answered_by is None:
            return False
        try:
            self._queue.put_nowait(Job(candidates, request, asked, keep))
        except asyncio.QueueFull:
            self.metrics.explored.labels("dropped_queue_full").inc(len(candidates))
            return False
        if not self._workers:  # here, not at construction: a router is built off the event loop
            self._workers = [asyncio.create_task(self._work()) for _ in range(self.spec.concurrency)]
        return True

    async def _work(self) -> None:
        worker = asyncio.current_task()
        assert worker is not None
        while not self._closed:
            job = await self._queue.get()
            try:
                await self._explore(job)
            except Exception:  # a bug: this job's exploring ends, never the worker
                log.exception("explore: exploring a request failed")
            finally:  # cancelled too (closing): the row keeps the answers that came
                self._writing.add(worker)  # so that closing does not cut the write short
                try:
                    await job.keep(job.shadow)
                finally:
                    self._writing.discard(worker)

    async def _explore(self, job: Job) -> None:
        assert self.budget is not None
        for name in job.candidates:
            # A candidate that costs nothing (the local model) cannot spend the budget: not checked.
            if self.answerers[name].price > 0 and not await self.budget.allows():
                self.metrics.explored.labels("over_budget").inc()
                continue
            try:
                async with asyncio.timeout(ANSWER_TIMEOUT_S):
                    body = await self._ask(name, job)
            except asyncio.CancelledError:  # closing cut it short
                self.metrics.explored.labels("failed").inc()
                raise
            except Exception as exc:
                self.metrics.explored.labels("failed").inc()
                # The type alone: an upstream's message may quote the conversation.
                log.info("explore: target '%s' gave no shadow answer (%s)", name, type(exc).__name__)
                continue
            job.shadow[name] = completions.content_of(body)
            self.metrics.explored.labels("asked").inc()
            usage = body.get("usage") or {}
            prompt, written = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
            cost = self.answerers[name].cost(prompt, written)
            self.metrics.explore_cost.labels(name).inc(cost)
            await self.budget.spend(cost)

    async def _ask(self, name: str, job: Job) -> Completion:
        answerer = self.answerers[name]
        if answerer.kind != "local":
            return await answerer.complete(job.request, job.asked)
        async with self._local:
            while self.writer.busy >= self.turns:  # every turn is a client's: wait for one to be free
                await asyncio.sleep(FREE_TURN_POLL_S)
            return await answerer.complete(job.request, job.asked)

    async def close(self) -> None:
        """Stops exploring; every row still waiting for its shadow answers is written with those that came."""
        self._closed = True
        for worker in self._workers:
            if worker not in self._writing:
                worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        while not self._queue.empty():
            job = self._queue.get_nowait()
            await job.keep(job.shadow)
        if self.budget is not None:
            await self.budget.settle()
