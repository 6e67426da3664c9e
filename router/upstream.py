"""Where answers come from: the in-process model, or any model litellm can reach.

A litellm target gets only the request fields the router knows (router.schemas.FORWARDED_FIELDS) and those
its policy entry declares (extra_fields); litellm's own control keywords never come from a client. The
router retries, not litellm nor the openai client under it: at most `num_retries` extra attempts, all within
`timeout_s`, and only where another attempt can help. Upstream failures become errors that say what
happened (docs/upstream.md has the table).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import os
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from policies import LiteLLMTarget
from router.completions import Completion
from router.errors import APIError
from router.schemas import ChatCompletionRequest

# litellm fetches its model cost map from the internet at import unless told otherwise; we run offline.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

log = logging.getLogger("router")
T = TypeVar("T")

BACKOFF_BASE_S = 0.25
"""The wait before the first retry; it doubles per retry up to BACKOFF_CAP_S, times a jitter in [0.5, 1]."""
BACKOFF_CAP_S = 4.0
MIN_ATTEMPT_S = 0.05
"""No retry starts with less than this left of the deadline."""
RETRIED_KINDS = frozenset({"timeout", "connection", "server", "rate_limit"})
NO_RETRY = {"x-should-retry": "false"}
"""On errors the router already retried (or that retrying cannot fix); the openai SDKs honour it."""


def check_fields(request: ChatCompletionRequest, upstreams: Iterable[LiteLLMUpstream]) -> None:
    """A 400 in OpenAI's words for fields that no target of the policy would take, before any model work.

    A field some target declares is accepted whichever target answers, and reaches only the targets that
    declare it: whether a request is refused does not depend on how it happens to be routed."""
    declared = {name for upstream in upstreams for name in upstream.target.extra_fields}
    unknown = request.unknown_fields(declared)
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        raise APIError(
            400,
            f"Unrecognized request argument{plural} supplied: {', '.join(unknown)}",
            param=unknown[0],
            code="unknown_parameter",
        )


class Malformed(Exception):
    """The upstream answered 200 with something that is not a chat completion (or a stream of one)."""


@dataclass(frozen=True)
class Failure:
    """One failed attempt, classified."""

    kind: str
    """The router_upstream_errors kind: timeout, connection, server, rate_limit, auth, not_found,
    bad_request, malformed, other."""
    status: int | None = None
    """The upstream's HTTP status, when it answered with one."""
    retry_after: float | None = None
    """Seconds, from the upstream's Retry-After (or retry-after-ms)."""
    detail: str = ""
    """The upstream's own error message (litellm's prefixes removed)."""
    param: str | None = None

    @property
    def retried(self) -> bool:
        return self.kind in RETRIED_KINDS


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception, its causes and contexts, and litellm's `original_exception`s."""
    found: list[BaseException] = []
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop(0)
        if current is None or any(current is seen for seen in found):
            continue
        found.append(current)
        original = getattr(current, "original_exception", None)
        pending += [current.__cause__, current.__context__]
        if isinstance(original, BaseException):
            pending.append(original)
    return found


def _retry_after(headers: Any) -> float | None:
    """Seconds from `retry-after-ms` or `Retry-After` (delta-seconds or an HTTP date); None without one."""
    if headers is None:
        return None
    try:
        milliseconds, value = headers.get("retry-after-ms"), headers.get("retry-after")
    except AttributeError:
        return None
    try:
        if milliseconds is not None:
            return max(0.0, float(milliseconds) / 1000)
        if value is None:
            return None
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(str(value))
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _headers(exc: BaseException) -> Any:
    """The upstream's response headers, where litellm kept them."""
    for candidate in (
        getattr(exc, "litellm_response_headers", None),
        getattr(exc, "headers", None),
        getattr(getattr(exc, "response", None), "headers", None),
    ):
        if candidate:
            return candidate
    return None


_PREFIX = re.compile(r"^(?:litellm\.\w+:\s*)?(?:\w+Error:\s*)?(?:\w+Exception\s*-\s*)?")


def _detail(exc: BaseException) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return _PREFIX.sub("", str(getattr(exc, "message", None) or exc)).strip()


def classify(exc: BaseException) -> Failure:
    """What went wrong, from what litellm raised. Checked in this order: an answer that is not a chat
    completion, a timeout, a connection failure (litellm labels a reset connection HTTP 500), then the
    upstream's status."""
    import httpx
    import openai

    chain = _chain(exc)
    detail = _detail(exc)
    if any(isinstance(e, Malformed | json.JSONDecodeError) for e in chain) or (
        "Empty or invalid response" in detail
    ):
        return Failure("malformed", detail=detail)
    if any(isinstance(e, TimeoutError | openai.APITimeoutError | httpx.TimeoutException) for e in chain):
        return Failure("timeout")
    if any(isinstance(e, openai.APIConnectionError | httpx.TransportError | OSError) for e in chain):
        return Failure("connection")
    status = getattr(exc, "status_code", None)
    if not isinstance(status, int):
        return Failure("other", detail=detail)
    param = getattr(exc, "param", None)
    return Failure(
        _STATUS_KINDS.get(status, "server" if status >= 500 else "other"),
        status,
        _retry_after(_headers(exc)),
        detail,
        param if isinstance(param, str) else None,
    )


_STATUS_KINDS = {
    400: "bad_request",
    401: "auth",
    403: "auth",
    404: "not_found",
    408: "timeout",
    413: "bad_request",
    422: "bad_request",
    429: "rate_limit",
}


def backoff(retry: int) -> float:
    """Seconds to wait before retry number `retry` (1, 2, ...): exponential, with jitter."""
    return min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (retry - 1)) * random.uniform(0.5, 1.0)


class LiteLLMUpstream:
    def __init__(self, name: str, target: LiteLLMTarget) -> None:
        import litellm  # slow to import: only policies with remote targets pay for it
        from litellm.types.utils import all_litellm_params

        # policies/keywords.py refuses control keywords at policy load; this is litellm's own list, for a
        # keyword that list does not know yet.
        clash = sorted(set(target.extra_fields) & set(all_litellm_params))
        if clash:
            raise ValueError(f"target '{name}': extra_fields {', '.join(clash)} are litellm control keywords")
        self._litellm = litellm
        self.name, self.target = name, target
        _warm_up(litellm)

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
        """Estimated US dollars from litellm's cost map; 0 for models it does not price (self-hosted ones)."""
        try:
            prompt, completion = self._litellm.cost_per_token(
                model=self.target.model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
            )
        except Exception:  # litellm raises a bare Exception for a model missing from its map
            return 0.0
        return float(prompt + completion)

    async def complete(self, request: ChatCompletionRequest) -> Completion:
        arguments = self._arguments(request, streamed=False)

        async def attempt(remaining: float) -> Completion:
            response = await self._litellm.acompletion(**arguments, timeout=remaining)
            body = dict(response.model_dump())
            if not body.get("choices"):
                raise Malformed("a completion without choices")
            return body

        return await self._retrying(attempt)

    async def stream(self, request: ChatCompletionRequest) -> AsyncIterator[Completion]:
        """Opens the stream and reads its first chunk before returning, retrying like `complete`: a target
        that fails before it has said anything is then an HTTP error, not a cut stream. A stream that breaks
        off later raises from the iterator (the client's stream then ends with an error event)."""
        arguments = self._arguments(request, streamed=True)
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
        return self._rest(response, chunks, first)

    async def _rest(
        self, response: Any, chunks: AsyncIterator[Any], first: Completion
    ) -> AsyncIterator[Completion]:
        finished = _finishes(first)
        try:
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
                raise self._error(failure, attempts) from error
            await asyncio.sleep(wait)

    def _wait(self, failure: Failure, attempts: int, left: float) -> float | None:
        """Seconds to wait before the next attempt, or None when there is to be none."""
        if not failure.retried or attempts > self.target.num_retries:
            return None
        wait = failure.retry_after if failure.retry_after is not None else backoff(attempts)
        return wait if left - wait >= MIN_ATTEMPT_S else None

    def _error(self, failure: Failure, attempts: int) -> APIError:
        """The client's error for the last failure (docs/upstream.md has the table). Messages name the
        target and what it did, never the key; the upstream's own words only where the client can act on
        them (a request the upstream refused)."""
        status, kind = failure.status, failure.kind
        tries = f"{attempts} attempt{'s' if attempts > 1 else ''}"
        http, code, headers = 502, "upstream_failed", NO_RETRY
        retry_after = (
            None if failure.retry_after is None else {"Retry-After": str(math.ceil(failure.retry_after))}
        )
        if kind == "rate_limit":
            http, code, headers = 429, "upstream_rate_limited", retry_after or {}
            what = f"it is rate-limiting the router (HTTP 429, {tries})"
        elif kind == "server" and status == 503 and retry_after:
            http, code, headers = 503, "upstream_unavailable", retry_after
            what = f"it is unavailable and asks to be retried later (HTTP 503, {tries})"
        elif kind == "bad_request":
            http = 413 if status == 413 else 400
            code = "upstream_request_too_large" if status == 413 else "upstream_bad_request"
            what = f"it rejected the request (HTTP {status}): {self._scrubbed(failure.detail)}"
        elif kind == "timeout":
            http, code = 504, "upstream_timeout"
            what = f"no answer within timeout_s ({self.target.timeout_s:g} s, {tries})"
        elif kind == "connection":
            code, what = "upstream_connection", f"unreachable (connection refused, reset or cut; {tries})"
        elif kind == "server":
            code, what = "upstream_server_error", f"HTTP {status} ({tries})"
        elif kind == "auth":
            code = "upstream_auth_failed"
            what = (
                f"it refused the router's credentials (HTTP {status}): the router's configuration for this "
                "target is wrong, not your API key"
            )
        elif kind == "not_found":
            code = "upstream_not_found"
            what = (
                "it does not know the model it is configured with (HTTP 404): the router's configuration for "
                "this target is wrong"
            )
        elif kind == "malformed":
            code, what = "upstream_malformed", "its answer is not a chat completion"
        else:
            what = f"HTTP {status}" if status else "an unexpected error"
        return APIError(
            http,
            f"target '{self.name}' failed: {what}",
            type="upstream_error",
            param=failure.param if http < 500 else None,
            code=code,
            headers=headers,
        )

    def _scrubbed(self, text: str, limit: int = 500) -> str:
        """The upstream's words for the client: never the target's key, and not at any length."""
        key = os.environ.get(self.target.api_key_env) if self.target.api_key_env else None
        if key:
            text = text.replace(key, "***")
        return text if len(text) <= limit else text[: limit - 3] + "..."


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
