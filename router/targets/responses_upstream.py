"""POST /v1/responses passed through to an `openai` target, which speaks the Responses API itself: the
client's request goes to `{api_base}/responses` with the target's model, and the upstream's answer comes back
as it was written, its body byte for byte, a stream event for event (each event's data as its bytes).

The call is the chat call's (router/targets/openai.py): the same pooled client, key, retries within the
deadline, error classification and fallbacks; a stream is opened (its first event read) before it counts as
answered, and each later event must follow within `timeout_s`. A stream is finished by a terminal event
(`response.completed`, `response.incomplete`, `response.failed` or `error`), which is the upstream's and
passes on as it came; one that ends without it raises a 502 (stream_cut), which the client's stream reports
as `response.failed` (router/responses/events.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

import aiohttp

from policies import OpenAITarget
from router.errors import APIError
from router.targets.base import Responded, Usage
from router.targets.litellm_errors import Malformed, classify
from router.targets.remote import Opened
from router.targets.upstream_status import UpstreamStatus, opened_stream, sse_data, upstream_json

log = logging.getLogger("router")
T = TypeVar("T")

TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed", "error"})
"""The events that end a Responses stream."""


class Event(dict[str, Any]):
    """One event of a Responses stream: its fields, and in `data` the bytes they came as (None for an event
    the router wrote), which are what the client gets."""

    data: bytes | None = None


class Upstream(Protocol):
    """What the pass-through needs of an `openai` target (router/targets/openai.py's OpenAIUpstream)."""

    name: str
    responses_url: str
    _options: dict[str, Any]

    @property
    def target(self) -> OpenAITarget: ...

    def _http(self) -> aiohttp.ClientSession: ...

    def _headers(self) -> dict[str, str]: ...

    async def retrying(self, attempt: Callable[[float], Awaitable[T]]) -> T: ...

    def held(self, response: aiohttp.ClientResponse) -> Callable[[], Awaitable[None]]: ...


def chat_usage(usage: object) -> Usage | None:
    """A Responses usage object as the chat counts the router meters (prompt and completion tokens)."""
    if not isinstance(usage, dict):
        return None
    given, written = usage.get("input_tokens"), usage.get("output_tokens")
    prompt = given if isinstance(given, int) else 0
    completion = written if isinstance(written, int) else 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def output_text(response: dict[str, Any]) -> str:
    """The text of a Response object's output messages, as the SDKs' `output_text` reads it."""
    return "".join(
        str(part.get("text") or "")
        for item in response.get("output") or ()
        if isinstance(item, dict) and item.get("type") == "message"
        for part in item.get("content") or ()
        if isinstance(part, dict) and part.get("type") == "output_text"
    )


def _body(upstream: Upstream, payload: dict[str, Any]) -> bytes:
    sent = {**payload, "model": upstream.target.model}
    cap = upstream.target.max_tokens
    if cap is not None:
        sent["max_output_tokens"] = min(payload.get("max_output_tokens") or cap, cap)
    return json.dumps(sent, ensure_ascii=False).encode()


async def respond(
    upstream: Upstream, payload: dict[str, Any], on_usage: Callable[[Usage | None], None]
) -> Responded:
    body, headers = _body(upstream, {**payload, "stream": False}), upstream._headers()

    async def attempt(_: float) -> Responded:
        http, url = upstream._http(), upstream.responses_url
        async with http.post(url, data=body, headers=headers, **upstream._options) as response:
            content = await response.read()
        if response.status >= 300:
            raise UpstreamStatus(response.status, response.headers, content)
        answer = upstream_json(content)
        if not isinstance(answer, dict) or not isinstance(answer.get("output"), list):
            raise Malformed("a response without output")
        return Responded(content, answer)

    responded = await upstream.retrying(attempt)
    on_usage(chat_usage(responded.body.get("usage")))
    return responded


async def respond_stream(
    upstream: Upstream, payload: dict[str, Any], on_usage: Callable[[Usage | None], None]
) -> Opened:
    body, headers = _body(upstream, {**payload, "stream": True}), upstream._headers()
    http = upstream._http()

    async def attempt(_: float) -> tuple[aiohttp.ClientResponse, AsyncIterator[Event], Event]:
        url, options = upstream.responses_url, upstream._options
        return await opened_stream(http, url, body, headers, options, response_events)

    response, events, first = await upstream.retrying(attempt)
    release = upstream.held(response)
    return Opened(_relay(upstream, first, events, on_usage, release), release)


async def _relay(
    upstream: Upstream,
    first: Event,
    rest: AsyncIterator[Event],
    on_usage: Callable[[Usage | None], None],
    release: Callable[[], Awaitable[None]],
) -> AsyncGenerator[dict[str, Any]]:
    """The events as they come, each within timeout_s; the usage of the terminal event is metered."""
    event: Event | None = first
    try:
        while event is not None:
            if event.get("type") in TERMINAL:
                response = event.get("response")
                on_usage(chat_usage(response.get("usage")) if isinstance(response, dict) else None)
                yield event
                async with asyncio.timeout(upstream.target.timeout_s):
                    async for _ in rest:  # read to the end, so that the connection goes back to the pool
                        pass
                return
            yield event
            try:
                async with asyncio.timeout(upstream.target.timeout_s):
                    event = await anext(rest)
            except StopAsyncIteration:
                event = None
        raise Malformed("the stream ended without a terminal event")
    except Exception as exc:
        failure = classify(exc)
        log.warning("target %s: stream broke off (%s)", upstream.name, failure.kind)
        raise APIError(
            502,
            f"target '{upstream.name}' broke off the stream mid-way ({failure.kind})",
            type="upstream_error",
            code="stream_cut",
        ) from exc
    finally:
        await release()


async def response_events(pieces: AsyncIterator[bytes]) -> AsyncIterator[Event]:
    """The events of a Responses server-sent event stream (its body as it arrives, in pieces of any size),
    until its end or a `data: [DONE]` some servers add. `event:` names are skipped (each event's `type` says
    the same); a data line that is not a JSON object raises Malformed."""
    async for raw in sse_data(pieces):
        yield _event(raw)


def _event(raw: bytes) -> Event:
    parsed = upstream_json(raw)
    if not isinstance(parsed, dict) or not isinstance(parsed.get("type"), str):
        raise Malformed("an event that is not a Responses stream event")
    event = Event(parsed)
    event.data = raw
    return event
