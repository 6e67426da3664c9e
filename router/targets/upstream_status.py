"""How an OpenAI-compatible upstream's answer is read: an error status, a body that is not JSON, a stream's
first event. Shared by the `openai` kind's chat calls (openai.py) and its Responses calls
(responses_upstream.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, TypeVar

import aiohttp

from router.targets.litellm_errors import Malformed

T = TypeVar("T")


class UpstreamStatus(Exception):
    """The upstream answered with an error status. Shaped as litellm's errors are for `classify`: the status
    in `status_code`, the response headers in `headers` (Retry-After), OpenAI's error object in `body`."""

    def __init__(self, status: int, headers: Mapping[str, str], content: bytes) -> None:
        error = _error_object(content)
        message = error.get("message") if isinstance(error.get("message"), str) else None
        super().__init__(f"HTTP {status}: {message or content[:200].decode(errors='replace')}")
        self.status_code, self.headers = status, headers
        self.body = error if message else None
        self.param = error.get("param")


def _error_object(content: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(content)
    except ValueError:
        return {}
    error = parsed.get("error") if isinstance(parsed, dict) else None
    return error if isinstance(error, dict) else {}


def upstream_json(content: bytes) -> Any:
    """The body parsed; Malformed (a 502 that may fall back) when it is not JSON, or not UTF-8."""
    try:
        return json.loads(content)
    except ValueError as exc:
        raise Malformed("an answer that is not JSON") from exc


async def opened_stream(
    http: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    options: Mapping[str, Any],
    parse: Callable[[AsyncIterator[bytes]], AsyncIterator[T]],
) -> tuple[aiohttp.ClientResponse, AsyncIterator[T], T]:
    """POST a streamed call and read its first event: an upstream that fails before it has said anything is
    then an error the caller may retry, not a cut stream. The response is closed on any failure."""
    response = await http.post(url, data=body, headers=headers, **options)
    try:
        if response.status >= 300:
            raise UpstreamStatus(response.status, response.headers, await response.read())
        events = parse(response.content.iter_any())
        try:
            first = await anext(events)
        except StopAsyncIteration:
            raise Malformed("an empty stream") from None
    except BaseException:
        response.close()
        raise
    return response, events, first


async def sse_data(pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Each event's data of a server-sent event stream (its body as it arrives, in pieces of any size), until
    `data: [DONE]` or its end. Comments (keep-alives) and other fields are skipped. After [DONE] the body is
    still read to its end, so that the connection goes back to the pool."""
    pending = b""
    data: list[bytes] = []
    done = False
    async for piece in pieces:
        if done:
            continue
        lines = (pending + piece).split(b"\n")
        pending = lines.pop()
        for line in lines:
            line = line.removesuffix(b"\r")
            if line:
                name, _, value = line.partition(b":")
                if name == b"data":  # a comment has no name (":..."); event, id, retry say nothing here
                    data.append(value.removeprefix(b" "))
                continue
            if not data:
                continue
            event, data = b"\n".join(data), []
            if event == b"[DONE]":
                done = True
                break
            yield event
    if done:
        return
    if pending.startswith(b"data:"):  # a last event without its blank line
        data.append(pending[5:].removeprefix(b" "))
    if data and data != [b"[DONE]"]:
        yield b"\n".join(data)
