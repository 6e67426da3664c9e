"""`kind: litellm` targets: any model litellm can reach.

A litellm target gets only the request fields the router knows (router.schemas.FORWARDED_FIELDS) and those
its policy entry declares (extra_fields); litellm's own control keywords never come from a client. The
router retries, not litellm nor the openai client under it: at most `num_retries` extra attempts, all within
`timeout_s`, and only where another attempt can help. Upstream failures become errors that say what
happened (docs/upstream.md has the table).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Collection
from typing import Any, TypeVar

from policies import Cooldown, LiteLLMTarget, Target
from router.completions import Completion
from router.errors import APIError
from router.schemas import ChatCompletionRequest
from router.targets.base import Answerer, Asked, LocalModelAccess, Usage
from router.targets.litellm_errors import NO_RETRY, Failure, Malformed, classify, client_error

# litellm fetches its model cost map from the internet at import unless told otherwise; we run offline.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# For providers that take images inline, litellm downloads a client's image URL from this host, blocking
# the event loop: a client could make the router fetch any public URL. Off unless the operator allows it.
os.environ.setdefault("MAX_IMAGE_URL_DOWNLOAD_SIZE_MB", "0")

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


class LiteLLMUpstream(Answerer, kind="litellm"):
    def __init__(self, name: str, target: LiteLLMTarget) -> None:
        super().__init__(name, target)
        import litellm  # slow to import: only policies with remote targets pay for it
        from litellm.types.utils import all_litellm_params

        # policies/keywords.py refuses control keywords at policy load; this is litellm's own list, for a
        # keyword that list does not know yet.
        clash = sorted(set(target.extra_fields) & set(all_litellm_params))
        if clash:
            raise ValueError(f"target '{name}': extra_fields {', '.join(clash)} are litellm control keywords")
        self._litellm = litellm
        self.target = target
        _warm_up(litellm)

    @classmethod
    def build(cls, name: str, spec: Target, local: LocalModelAccess) -> LiteLLMUpstream:
        assert isinstance(spec, LiteLLMTarget)
        return cls(name, spec)

    @property
    def extra_fields(self) -> Collection[str]:
        return self.target.extra_fields

    @property
    def cooldown(self) -> Cooldown:
        return self.target.cooldown

    def _arguments(self, request: ChatCompletionRequest, streamed: bool) -> dict[str, Any]:
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
        arguments.update(
            model=self.target.model,
            messages=request.forwarded_messages(),
            # The router retries (see _retrying); neither litellm nor the openai client under it may.
            num_retries=0,
            max_retries=0,
        )
        if self.target.api_base:
            arguments["api_base"] = self.target.api_base
        if self.target.api_key_env:
            arguments["api_key"] = self._api_key(self.target.api_key_env)
        return arguments

    def _api_key(self, variable: str) -> str:
        key = os.environ.get(variable)
        if not key:
            message = f"target '{self.name}' has no API key: the environment variable {variable} is not set"
            raise APIError(502, message, type="upstream_error", code="missing_api_key", headers=NO_RETRY)
        return key

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """US dollars at the target's declared cost, else litellm's cost map; 0 for models it does not
        price (self-hosted ones)."""
        if self.target.cost is not None:
            return self.target.cost.of(prompt_tokens, completion_tokens)
        try:
            prompt, completion = self._litellm.cost_per_token(
                model=self.target.model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
            )
        except Exception:  # litellm raises a bare Exception for a model missing from its map
            return 0.0
        return float(prompt + completion)

    async def complete(self, request: ChatCompletionRequest, asked: Asked | None = None) -> Completion:
        arguments = self._arguments(request, streamed=False)

        async def attempt(remaining: float) -> Completion:
            response = await self._litellm.acompletion(**arguments, timeout=remaining)
            body = dict(response.model_dump())
            if not body.get("choices"):
                raise Malformed("a completion without choices")
            return body

        return await self._retrying(attempt)

    async def stream(
        self,
        request: ChatCompletionRequest,
        asked: Asked | None = None,
        on_usage: Callable[[Usage | None], None] | None = None,
    ) -> Opened:
        """Opens the stream and reads its first chunk before returning, retrying like `complete`: a target
        that fails before it has said anything is then an HTTP error, not a cut stream. A stream that breaks
        off later raises from the iterator (the client's stream then ends with an error event)."""
        arguments = self._arguments(request, streamed=True)
        # Usage is asked for whether or not the client asked: an answer's tokens are metered and count
        # toward its caller's limits either way. A client that did not ask does not see it.
        arguments["stream_options"] = {**(arguments.get("stream_options") or {}), "include_usage": True}
        shown = request.include_usage
        # Each read may take timeout_s (the httpx timeout litellm sets); the deadline bounds the opening.
        read_timeout = self.target.timeout_s

        async def attempt(_: float) -> tuple[Any, AsyncIterator[Any], Completion]:
            response = await self._litellm.acompletion(**arguments, stream=True, timeout=read_timeout)
            chunks = aiter(response)
            try:
                first = await anext(chunks)
                data = dict(first.model_dump(exclude_none=True))
                self._check_chunk(response, data)
            except StopAsyncIteration:
                await _close(response)
                raise Malformed("an empty stream") from None
            except BaseException:
                await _close(response)
                raise
            return response, chunks, data

        response, chunks, first = await self._retrying(attempt)
        return Opened(response, self._rest(response, chunks, first, _Usage(on_usage, shown)))

    async def _rest(
        self,
        response: Any,
        chunks: AsyncIterator[Any],
        first: Completion,
        usage: _Usage,
    ) -> AsyncGenerator[Completion]:
        finished = _finishes(first)
        try:
            if usage.passed(first):
                yield first
            while True:
                try:
                    async with asyncio.timeout(self.target.timeout_s):
                        chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                data = dict(chunk.model_dump(exclude_none=True))
                self._check_chunk(response, data)
                finished = finished or _finishes(data)
                if usage.passed(data):
                    yield data
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
            await _close(response)

    @staticmethod
    def _check_chunk(response: Any, chunk: Completion) -> None:
        """litellm ends every stream with a finish_reason chunk, inventing "stop" when the upstream sent
        none: for a body that was not an event stream at all, or one cut short but cleanly closed. It keeps
        what the upstream did send, which tells the two apart."""
        if not _finishes(chunk):
            return
        missing = object()
        received = getattr(response, "received_finish_reason", missing)
        if received is missing:  # a litellm without the attribute: nothing to tell by
            return
        if received is None and getattr(response, "intermittent_finish_reason", None) is None:
            raise Malformed("the stream ended without a finish_reason from the upstream")

    async def _retrying(self, attempt: Callable[[float], Awaitable[T]]) -> T:
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


_warmed = False


def _warm_up(litellm: Any) -> None:
    """litellm's first call imports the rest of litellm and the openai client (about a second, several on a
    busy machine), blocking the event loop and eating into the first request's deadline. A mocked call, made
    while the policy loads (off the event loop, without network), does it instead."""
    global _warmed
    if _warmed:
        return
    _warmed = True
    litellm.suppress_debug_info = True  # no "Give Feedback / Get Help" banners on stdout per failure
    try:
        import openai.resources.chat  # noqa: F401  (what the openai client imports on its first request)

        litellm.completion(
            model="openai/warm-up", messages=[{"role": "user", "content": "-"}], mock_response="-"
        )
    except Exception:
        log.debug("warming litellm up failed", exc_info=True)


class _Usage:
    """Where a stream's usage goes: always to the meter, to the client only when it asked for it."""

    def __init__(self, on_usage: Callable[[Usage | None], None] | None, shown: bool) -> None:
        self.on_usage, self.shown = on_usage, shown

    def passed(self, chunk: Completion) -> bool:
        """Meters the chunk's usage; whether the chunk goes on to the client. For a client that did not ask
        for usage, it is removed, and a chunk that carried nothing else is dropped (litellm sends it with
        an empty delta)."""
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

    def __init__(self, response: Any, chunks: AsyncGenerator[Completion]) -> None:
        self._response, self._chunks = response, chunks

    def __aiter__(self) -> AsyncIterator[Completion]:
        return self._chunks

    async def aclose(self) -> None:
        await self._chunks.aclose()
        await _close(self._response)


async def _close(response: Any) -> None:
    """Releases a litellm stream's connection (best effort: it may be half gone already)."""
    close = getattr(response, "aclose", None)
    if close is None:
        return
    try:
        await close()
    except Exception:
        log.debug("closing a stream failed", exc_info=True)


def _finishes(chunk: Completion) -> bool:
    return any(choice.get("finish_reason") for choice in chunk.get("choices") or ())
