"""A routed chat stream as the Responses API's events, and any Responses stream as server-sent events.

`ResponseEvents` turns chat chunks into `response.created`; per output item `response.output_item.added`,
for a message `response.content_part.added`, `response.output_text.delta` per piece of text,
`response.output_text.done`, `response.content_part.done`, and for a tool call
`response.function_call_arguments.delta` and `.done`; then `response.output_item.done` per item and last
`response.completed` (or `response.incomplete`, cut for length) with the whole response and its usage.

`sse` writes events as `event:` and `data:` lines (a passed-through event's data as the upstream's bytes).
It stores the response once its last event is in, before the client reads it, so that a next request with
previous_response_id finds it; a stream that fails after its headers ends with `response.failed`.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any

from router.errors import APIError
from router.metrics import Metrics
from router.responses.translate import Response, call_item, finished, message_item
from router.stages.shaping import Routed
from router.targets import Chunks

log = logging.getLogger("router")

DONE = frozenset({"response.completed", "response.incomplete"})


class ResponseEvents:
    """The Responses events of a routed chat stream; `response` is the skeleton (translate.skeleton)."""

    def __init__(self, chunks: Chunks, response: Response) -> None:
        self.chunks, self.response = chunks, response
        self._numbers = itertools.count()
        self._iterator = self._events()

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._iterator

    async def aclose(self) -> None:
        await self._iterator.aclose()
        await self.chunks.aclose()

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {"type": kind, "sequence_number": next(self._numbers), **fields}

    async def _events(self) -> AsyncGenerator[dict[str, Any]]:
        suffix = self.response["id"].removeprefix("resp_")
        items: list[dict[str, Any]] = []  # the output, in order, as it is written
        text: dict[str, Any] | None = None  # the message item, once there is text
        calls: dict[int, dict[str, Any]] = {}  # the chat stream's tool call index -> its item
        finish, used, created = None, None, False
        async for chunk in self.chunks:
            if not created:
                self.response = {**self.response, "model": chunk.get("model") or self.response["model"]}
                yield self._event("response.created", response=self.response)
                created = True
            used = chunk.get("usage") or used
            for choice in chunk.get("choices") or ():
                finish = choice.get("finish_reason") or finish
                delta = choice.get("delta") or {}
                if delta.get("content"):
                    if text is None:
                        text = message_item(f"msg_{suffix}", "", "in_progress")
                        items.append(text)
                        for event in self._opened(text, len(items) - 1):
                            yield event
                    text["content"][0]["text"] += delta["content"]
                    yield self._delta("response.output_text.delta", text, items, delta["content"], True)
                for call in delta.get("tool_calls") or ():
                    index = call.get("index", len(calls))
                    if index not in calls:  # its arguments come as deltas, the first one's too
                        calls[index] = call_item(f"fc_{suffix}_{index}", call, "in_progress") | {
                            "arguments": ""
                        }
                        items.append(calls[index])
                        yield self._event(
                            "response.output_item.added", output_index=len(items) - 1, item=dict(calls[index])
                        )
                    piece = (call.get("function") or {}).get("arguments") or ""
                    if piece:
                        calls[index]["arguments"] += piece
                        yield self._delta(
                            "response.function_call_arguments.delta", calls[index], items, piece
                        )
        if not created:
            yield self._event("response.created", response=self.response)
        if text is None and not calls:  # an empty answer is still a message
            text = message_item(f"msg_{suffix}", "", "in_progress")
            items.append(text)
            for event in self._opened(text, 0):
                yield event
        for position, item in enumerate(items):
            item["status"] = "completed"
            for event in self._closed(item, position):
                yield event
        done = finished(self.response, items, finish, used)
        kind = "response.completed" if done["status"] == "completed" else "response.incomplete"
        yield self._event(kind, response=done)

    def _opened(self, item: dict[str, Any], position: int) -> list[dict[str, Any]]:
        empty = {"type": "output_text", "text": "", "annotations": []}
        opened = {**item, "content": []}
        return [
            self._event("response.output_item.added", output_index=position, item=opened),
            self._event(
                "response.content_part.added",
                item_id=item["id"],
                output_index=position,
                content_index=0,
                part=empty,
            ),
        ]

    def _delta(
        self, kind: str, item: dict[str, Any], items: list[dict[str, Any]], piece: str, text: bool = False
    ) -> dict[str, Any]:
        where: dict[str, Any] = {"item_id": item["id"], "output_index": items.index(item)}
        if text:
            where.update(content_index=0, logprobs=[])
        return self._event(kind, **where, delta=piece)

    def _closed(self, item: dict[str, Any], position: int) -> list[dict[str, Any]]:
        where = {"item_id": item["id"], "output_index": position}
        if item["type"] == "function_call":
            args = item["arguments"]
            done = self._event("response.function_call_arguments.done", **where, arguments=args)
            return [done, self._event("response.output_item.done", output_index=position, item=item)]
        part = item["content"][0]
        return [
            self._event(
                "response.output_text.done", **where, content_index=0, text=part["text"], logprobs=[]
            ),
            self._event("response.content_part.done", **where, content_index=0, part=part),
            self._event("response.output_item.done", output_index=position, item=item),
        ]


async def sse(
    routed: Routed,
    events: AsyncIterable[dict[str, Any]],
    response: Response,
    metrics: Metrics,
    keep: Callable[[Response], Awaitable[None]] | None,
) -> AsyncIterator[bytes]:
    """`events` as server-sent events. `response`: the skeleton a failure's event reports when no event
    named the response yet; `keep(response)`: stores the finished response (None: store: false)."""
    number = -1
    try:
        async for event in events:
            number = event.get("sequence_number", number + 1)
            named = event.get("response")
            if isinstance(named, dict):
                response = named
            if keep is not None and event.get("type") in DONE and isinstance(named, dict):
                await keep(named)
            data = getattr(event, "data", None) or json.dumps(event, ensure_ascii=False).encode()
            yield b"event: " + str(event.get("type")).encode() + b"\ndata: " + data + b"\n\n"
    except Exception as exc:  # headers are gone: the stream can only end with a failure event
        log.exception("stream %s failed", routed.request_id)
        metrics.upstream_failed(routed.decision.target or "none", "stream_cut")
        said = exc.message if isinstance(exc, APIError) else f"stream failed ({type(exc).__name__})"
        error = {"code": "server_error", "message": said}
        failed = {**response, "status": "failed", "error": error}
        event = {"type": "response.failed", "sequence_number": number + 1, "response": failed}
        yield b"event: response.failed\ndata: " + json.dumps(event).encode() + b"\n\n"
