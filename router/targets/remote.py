"""What every remote target kind shares (litellm.py, openai.py): the client's fields as a remote target gets
them, its API key, retries within the deadline, and a stream relayed after its first chunk.

The router retries, not the library under it: at most `num_retries` extra attempts, all within `timeout_s`,
and only where another attempt can help. Failures become errors that say what happened
(router/targets/litellm_errors.py classifies them; docs/upstream.md has the table).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Collection
from typing import Any, TypeVar

from policies import Cooldown, RemoteTarget, Target
from router.completions import Completion
from router.errors import APIError
from router.schemas import ChatCompletionRequest
from router.targets.base import Answerer, Usage
from router.targets.litellm_errors import NO_RETRY, Failure, Malformed, classify, client_error

log = logging.getLogger("router")
T = TypeVar("T")

BACKOFF_BASE_S = 0.25
"""The wait before the first retry; it doubles per retry up to BACKOFF_CAP_S, times a jitter in [0.5, 1]."""
BACKOFF_CAP_S = 4.0
MIN_ATTEMPT_S = 0.05
"""No retry starts with less than this left of the deadline."""


def backoff(retry: int) -> float:
    """Seconds to wait before retry number `retry` (1, 2, ...): exponential, with jitter."""
    return min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (retry - 1)) * random.uniform(0.5, 1.0)


class RemoteAnswerer(Answerer):
    """A target behind an HTTP API. Subclasses register a `kind` and make the calls."""

    target: RemoteTarget

    def __init__(self, name: str, target: Target) -> None:
        assert isinstance(target, RemoteTarget)
        super().__init__(name, target)
        self.target = target

    @property
    def extra_fields(self) -> Collection[str]:
        return self.target.extra_fields

    @property
    def cooldown(self) -> Cooldown:
        return self.target.cooldown

    def forwarded(self, request: ChatCompletionRequest, streamed: bool) -> dict[str, Any]:
        """The client's fields this target gets (a ChatCompletionRequest's allow-list and the target's
        extra_fields), its max_tokens cap applied; model and messages are the caller's to add."""
        arguments = request.forwarded(self.target.extra_fields)
        if not streamed:  # a hedged or failure-aware answer is fetched whole even when the client streams
            arguments.pop("stream_options", None)
        cap = self.target.max_tokens
        if cap is not None:
            given = [key for key in ("max_tokens", "max_completion_tokens") if key in arguments]
            for key in given:
                arguments[key] = min(arguments[key], cap)
            if not given:
                arguments["max_tokens"] = cap
        return arguments

    def api_key(self) -> str | None:
        """The key from `api_key_env` (read per call, so a rotated key applies at once); None without one."""
        variable = self.target.api_key_env
        if variable is None:
            return None
        key = os.environ.get(variable)
        if not key:
            message = f"target '{self.name}' has no API key: the environment variable {variable} is not set"
            raise APIError(502, message, type="upstream_error", code="missing_api_key", headers=NO_RETRY)
        return key

    async def retrying(self, attempt: Callable[[float], Awaitable[T]]) -> T:
        """`attempt(remaining seconds)`, retried while it may help and the deadline (timeout_s) allows."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.target.timeout_s
        attempts = 0
        while True:
            attempts += 1
            remaining = deadline - loop.time()
            error: Exception
            try:
                async with asyncio.timeout(remaining):
                    return await attempt(remaining)
            except APIError:
                raise
            except Exception as exc:
                error = exc
            failure = classify(error)
            wait = self._wait(failure, attempts, deadline - loop.time())
            # A request the upstream refused is the client's doing, not news about the target.
            log.log(
                logging.INFO if failure.kind == "bad_request" else logging.WARNING,
                "target %s: attempt %d failed (%s%s)%s",
                self.name,
                attempts,
                failure.kind,
                f", HTTP {failure.status}" if failure.status else "",
                "" if wait is None else f", retrying in {wait:.2f} s",
            )
            if wait is None:
                raise client_error(self.name, self.target, failure, attempts) from error
            await asyncio.sleep(wait)

    def _wait(self, failure: Failure, attempts: int, left: float) -> float | None:
        """Seconds to wait before the next attempt, or None when there is to be none."""
        if not failure.retried or attempts > self.target.num_retries:
            return None
        wait = failure.retry_after if failure.retry_after is not None else backoff(attempts)
        return wait if left - wait >= MIN_ATTEMPT_S else None

    async def relay(
        self,
        first: Completion,
        rest: AsyncIterator[Completion],
        usage: StreamUsage,
        release: Callable[[], Awaitable[None]],
    ) -> AsyncGenerator[Completion]:
        """The client's stream from a stream already opened with `first`: each later chunk must come within
        timeout_s, and the stream must have finished (a finish_reason). A stream that breaks off raises an
        APIError (the client's stream then ends with an error event). `release` frees the upstream."""
        finished = finishes(first)
        try:
            if usage.passed(first):
                yield first
            while True:
                try:
                    async with asyncio.timeout(self.target.timeout_s):
                        chunk = await anext(rest)
                except StopAsyncIteration:
                    break
                finished = finished or finishes(chunk)
                if usage.passed(chunk):
                    yield chunk
            if not finished:
                raise Malformed("the stream ended without a finish_reason")
        except Exception as exc:
            failure = classify(exc)
            log.warning("target %s: stream broke off (%s)", self.name, failure.kind)
            raise APIError(
                502,
                f"target '{self.name}' broke off the stream mid-way ({failure.kind})",
                type="upstream_error",
                code="stream_cut",
            ) from exc
        finally:
            await release()


class StreamUsage:
    """Where a stream's usage goes: always to the meter, to the client only when it asked for it."""

    def __init__(self, on_usage: Callable[[Usage | None], None] | None, shown: bool) -> None:
        self.on_usage, self.shown = on_usage, shown

    def passed(self, chunk: Completion) -> bool:
        """Meters the chunk's usage; whether the chunk goes on to the client. For a client that did not ask
        for usage, it is removed, and a chunk that carried nothing else is dropped (providers send it with
        no choices, litellm with an empty delta)."""
        found = chunk.get("usage")
        if not found:
            return True
        if self.on_usage:
            self.on_usage(found)
        if self.shown:
            return True
        chunk.pop("usage")
        return any(c.get("delta") or c.get("finish_reason") for c in chunk.get("choices") or ())


class Opened:
    """A stream the upstream has begun: its chunks, and `aclose`, which releases the upstream connection
    whether the chunks were read, partly read or not at all (a generator that never started cannot)."""

    def __init__(self, chunks: AsyncGenerator[Completion], release: Callable[[], Awaitable[None]]) -> None:
        self._chunks, self._release = chunks, release

    def __aiter__(self) -> AsyncIterator[Completion]:
        return self._chunks

    async def aclose(self) -> None:
        await self._chunks.aclose()
        await self._release()


def finishes(chunk: Completion) -> bool:
    return any(choice.get("finish_reason") for choice in chunk.get("choices") or ())
