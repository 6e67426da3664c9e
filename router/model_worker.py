"""The model's worker: one thread owns the in-process model, and every forward pass (a score, a step of the
local answers) is a job on it. Requests queue for that thread instead of fighting over the cores, and a
job whose caller is cancelled stops at the model's next layer.

The scorer's micro-batcher and the local target's generation batcher both run their jobs here; a reloaded
router takes the worker over from the one it replaces, so a new adapter never loads during a forward pass.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

from localmodel import Aborted, LocalModel, Message
from router.errors import APIError

T = TypeVar("T")


class OnModel(Protocol):
    """Runs `fn(*args)` on the thread that owns the model (`ModelWorker.run`)."""

    async def __call__(self, fn: Callable[..., T], *args: object) -> T: ...


class ModelWorker:
    def __init__(self, model: LocalModel) -> None:
        self.model = model
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        # Counting a long prompt's tokens takes milliseconds: neither the event loop nor the model waits.
        self._text_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)` on the model's thread; if the caller is cancelled, the job stops at its next layer."""
        abort = threading.Event()
        job = asyncio.get_running_loop().run_in_executor(
            self._thread, self.model.run_abortable, abort, fn, *args
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

    async def prompt_tokens(self, messages: list[Message]) -> int:
        """The prompt's length in tokens, counted off the event loop and off the model's thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._text_thread, self.model.prompt_tokens, messages)

    def close(self) -> None:
        self._text_thread.shutdown(wait=False, cancel_futures=True)
        self._thread.shutdown(wait=False, cancel_futures=True)
