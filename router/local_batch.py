"""Concurrent local answers written as one batch, each step a job on the model's worker.

Answers join the running batch between steps and leave it when done or abandoned (router/generation.py
holds the tensor work); a reader sees each answer's tokens as they are written, to stream them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

from localmodel.model import Draft, LocalModel, Message
from router import generation
from router.errors import APIError
from router.generation import Batch, Token
from router.model_worker import OnModel

MAX_LENGTH_RATIO = 2.0
"""Prompts read in one prefill differ at most this much in length (bounds the padding read)."""


@dataclass(eq=False)
class Row:
    """One answer being written: its tokens so far, the stop token (if it came) included."""

    prompt: list[int]
    max_new_tokens: int
    adapter: str | None = None
    """The loaded adapter it is written with (a target's answerer); None: the base weights."""
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    done: bool = False
    """Written to the end (a stop token or the length limit), failed, or left."""
    error: BaseException | None = None
    left: bool = False
    """Its reader went away: it leaves the batch at the next step."""
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    on_leave: Callable[[], None] = lambda: None

    def leave(self) -> None:
        if not self.done:
            self.left = self.done = True
            self.changed.set()
            self.on_leave()

    async def wait(self, seen: int) -> None:
        """Until there are more than `seen` tokens or the row is done; raises the failure that ended it."""
        while len(self.tokens) <= seen and not self.done:
            self.changed.clear()
            await self.changed.wait()
        if self.error is not None:
            raise self.error

    async def finished(self) -> None:
        while not self.done:
            await self.wait(len(self.tokens))
        if self.error is not None:
            raise self.error

    def draft(self, model: LocalModel) -> Draft:
        return model.draft_of(self.tokens, self.logprobs, len(self.prompt))

    def _wrote(self, token: Token, stop_ids: set[int]) -> None:
        self.tokens.append(token[0])
        self.logprobs.append(token[1])
        if token[0] in stop_ids or len(self.tokens) >= self.max_new_tokens:
            self.done = True
        self.changed.set()

    def _failed(self, error: BaseException) -> None:
        if not self.done:
            self.error, self.done = error, True
            self.changed.set()


class Abandoned(Exception):
    """Every reader of the rows in a job went away: the job was stopped (at the model's next layer)."""


class GenerationBatcher:
    """Writes every local answer of a router. `turns` bounds the answers in the batch or waiting to join it
    (each holds its part of the KV cache); `max_prefill_tokens` bounds one prefill job (rows x padded
    length), so that reading several prompts at once holds the model no longer than reading the longest
    one allowed."""

    def __init__(
        self,
        model: LocalModel,
        run: OnModel,
        turns: int,
        max_prefill_tokens: int,
        observe: Callable[[int], None] | None = None,
    ) -> None:
        """`observe` is told the number of rows each job writes."""
        self.model, self._run, self._observe = model, run, observe
        self.turns = asyncio.Semaphore(turns)
        self.max_prefill_tokens = max_prefill_tokens
        self.rows: list[Row] = []
        """The batch's rows, in its order."""
        self._batch: Batch | None = None
        self._waiting: list[Row] = []
        self._worker: asyncio.Task[None] | None = None
        self._left = asyncio.Event()
        """Set when a reader leaves its row: the job running may have lost every reader."""

    async def write(self, messages: list[Message], max_new_tokens: int, adapter: str | None = None) -> Row:
        """A new answer, written with the loaded adapter `adapter` (None: the base weights) and queued to
        join the batch once a turn is free; the caller must `leave` it if it stops reading before it is
        done."""
        prompt = await asyncio.to_thread(self.model.prompt_ids, messages)
        await self.turns.acquire()
        row = Row(prompt, max_new_tokens, adapter, on_leave=self._left.set)
        self._waiting.append(row)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work())
        return row

    @property
    def busy(self) -> int:
        """Answers in the batch or waiting to join it."""
        return len(self.rows) + len(self._waiting)

    async def close(self) -> None:
        """Once the answers being written are done (a retired router's streams finish first)."""
        if self._worker is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    async def _work(self) -> None:
        """Runs while there is something to write; a new answer starts it again."""
        try:
            while True:
                kept = self._prune()
                if not self.rows and not self._waiting:
                    return
                try:
                    await self._advance(kept)
                except Exception as exc:  # the batch's state is lost with the job that failed
                    for row in self.rows:
                        row._failed(exc)
                    self._batch = None
        except asyncio.CancelledError:
            gone = APIError(503, "The server is shutting down", type="service_unavailable")
            for row in [*self.rows, *self._waiting]:
                row._failed(gone)
            self._release([*self.rows, *self._waiting])
            self.rows, self._waiting, self._batch = [], [], None
            raise

    def _prune(self) -> list[int]:
        """Lets go of the rows that are done; the indices, in the batch, of those kept."""
        self._release([row for row in [*self.rows, *self._waiting] if row.done])
        self._waiting = [row for row in self._waiting if not row.done]
        kept = [k for k, row in enumerate(self.rows) if not row.done]
        self.rows = [self.rows[k] for k in kept]
        if not self.rows:
            self._batch = None
        return kept

    async def _advance(self, kept: list[int]) -> None:
        """One job: read the prompts of rows joining (the batch's rows wait meanwhile), else one step."""
        joining = self._joining()
        if self._observe is not None:
            self._observe(len(joining) or len(self.rows))
        if joining:
            self._waiting = [row for row in self._waiting if row not in joining]
            self.rows = [*self.rows, *joining]
            prompts, adapters = [row.prompt for row in joining], [row.adapter for row in joining]
            self._batch, tokens = await self._unless_abandoned(
                _keep_and_join, self._batch, kept, prompts, adapters
            )
            written = joining
        else:
            self._batch, tokens = await self._unless_abandoned(_keep_and_step, self._batch, kept)
            written = self.rows
        for row, token in zip(written, tokens, strict=True):
            if not row.done:
                row._wrote(token, self.model.stop_ids)

    async def _unless_abandoned(self, fn: Callable[..., Written], *args: object) -> Written:
        """`fn(model, *args)` on the model's worker, stopped once every row in the job has been left."""
        rows = list(self.rows)
        running = asyncio.ensure_future(self._run(fn, self.model, *args))
        try:
            while not running.done():
                if all(row.left for row in rows):
                    running.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await running
                    raise Abandoned
                self._left.clear()
                left = asyncio.ensure_future(self._left.wait())
                await asyncio.wait([running, left], return_when=asyncio.FIRST_COMPLETED)
                left.cancel()
            return running.result()
        finally:
            running.cancel()  # the worker itself was cancelled: so is its job

    def _joining(self) -> list[Row]:
        """The oldest waiting row, and those waiting after it whose prompts are of a like length, within the
        prefill budget."""
        if not self._waiting:
            return []
        group = [self._waiting[0]]
        shortest = longest = len(group[0].prompt)
        for row in self._waiting[1:]:
            low, high = min(shortest, len(row.prompt)), max(longest, len(row.prompt))
            if high > MAX_LENGTH_RATIO * low or high * (len(group) + 1) > self.max_prefill_tokens:
                continue
            group.append(row)
            shortest, longest = low, high
        return group

    def _release(self, rows: list[Row]) -> None:
        for _ in rows:
            self.turns.release()


Written = tuple[Batch, list[Token]]
"""The batch after a job, and the tokens it wrote (one per row written)."""


def _keep_and_join(
    model: LocalModel,
    batch: Batch | None,
    kept: list[int],
    prompts: list[list[int]],
    adapters: list[str | None],
) -> Written:
    """On the model's worker: drop the rows that left, then read the joining rows' prompts."""
    joining, tokens = generation.prefill(model, prompts, adapters)
    return generation.join(generation.keep(batch, kept) if batch else None, joining), tokens


def _keep_and_step(model: LocalModel, batch: Batch | None, kept: list[int]) -> Written:
    """On the model's worker: drop the rows that left, then write the next token of the others."""
    kept_batch = generation.keep(batch, kept) if batch else None
    assert kept_batch is not None  # a step runs only with rows in the batch
    return kept_batch, generation.step(model, kept_batch)
