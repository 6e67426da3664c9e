"""Dynamic micro-batching: requests that arrive within a few milliseconds share one forward pass."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

I = TypeVar("I")  # noqa: E741
O = TypeVar("O")  # noqa: E741


_Entry = tuple[I, asyncio.Future[O], float]
"""An item, the future its caller awaits, and when it was queued."""


class Overloaded(Exception):
    """The queue is full: the caller should answer 503 with Retry-After rather than queue without bound."""


@dataclass(frozen=True)
class BatchLimits:
    max_size: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 256
    max_length_ratio: float = 2.0
    """Within one forward pass the longest item is at most this many times the shortest (bounds padding)."""


class MicroBatcher(Generic[I, O]):
    def __init__(
        self,
        run: Callable[[list[I]], Awaitable[list[O]]],
        length: Callable[[I], int],
        limits: BatchLimits = BatchLimits(),
        observe: Callable[[list[float]], None] | None = None,
    ) -> None:
        """`observe` gets, for each forward pass, the seconds each of its items waited in the queue."""
        self._run, self._length, self.limits, self._observe = run, length, limits, observe
        self._queue: asyncio.Queue[_Entry[I, O]] = asyncio.Queue(limits.max_queue)
        self._worker: asyncio.Task[None] | None = None
        self.batch_sizes: deque[int] = deque(maxlen=1000)
        """The sizes of the most recent forward passes (bounded: a server runs for months)."""

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    async def submit(self, item: I) -> O:
        if self._worker is None:
            self._worker = asyncio.create_task(self._work())
        future: asyncio.Future[O] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((item, future, time.perf_counter()))
        except asyncio.QueueFull:
            raise Overloaded(f"{self.limits.max_queue} requests already waiting") from None
        return await future

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    async def _collect(self) -> list[_Entry[I, O]]:
        batch = [await self._queue.get()]
        deadline = asyncio.get_running_loop().time() + self.limits.max_wait_ms / 1000
        while len(batch) < self.limits.max_size:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0 and self._queue.empty():
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), max(remaining, 0)))
            except TimeoutError:
                break
        return batch

    def _groups(self, batch: list[_Entry[I, O]]) -> list[list[_Entry[I, O]]]:
        """Sort by length and cut where the longest would exceed `max_length_ratio` x the shortest."""
        ordered = sorted(batch, key=lambda entry: self._length(entry[0]))
        groups: list[list[_Entry[I, O]]] = []
        for entry in ordered:
            if groups and self._length(entry[0]) <= self.limits.max_length_ratio * max(
                1, self._length(groups[-1][0][0])
            ):
                groups[-1].append(entry)
            else:
                groups.append([entry])
        return groups

    async def _unless_abandoned(self, items: list[I], futures: list[asyncio.Future[O]]) -> list[O]:
        """Run a forward pass, cancelled as soon as every caller in it has gone (disconnected)."""
        run = asyncio.ensure_future(self._run(items))

        def gone(_: asyncio.Future[O]) -> None:
            if all(f.cancelled() for f in futures):
                run.cancel()

        for future in futures:
            future.add_done_callback(gone)
        return await run

    async def _work(self) -> None:
        while True:
            for group in self._groups(await self._collect()):
                live = [(item, future) for item, future, _ in group if not future.cancelled()]
                if not live:
                    continue
                self.batch_sizes.append(len(live))
                if self._observe is not None:
                    now = time.perf_counter()
                    self._observe([now - queued for _, future, queued in group if not future.cancelled()])
                try:
                    results = await self._unless_abandoned([item for item, _ in live], [f for _, f in live])
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        raise  # the batcher is closing
                    continue  # every caller went away
                except Exception as exc:  # every waiter learns of the failure; the worker lives on
                    for _, future in live:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(live, results, strict=True):
                    if not future.done():
                        future.set_result(result)
