"""What tests/faults.py's provider answers beyond plain chat: the Responses API (POST .../responses, whole or
as its events) and a chat tool call (model `tool-call`), each byte for byte, so that a test can compare what
the router passed on with what the upstream wrote."""

from __future__ import annotations

import json
from typing import Any

from openai.types.chat import ChatCompletionMessageFunctionToolCallParam

RESPONSE_TEXT = "An upstream response."
RESPONSE_USAGE = {"input_tokens": 6, "output_tokens": 3, "total_tokens": 9}
TOOL_CALL: ChatCompletionMessageFunctionToolCallParam = {
    "id": "call_weather_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}


def _response(model: str, status: str) -> dict[str, Any]:
    done = status == "completed"
    part = {"type": "output_text", "text": RESPONSE_TEXT if done else "", "annotations": []}
    message = {"type": "message", "id": "msg_up", "status": status, "role": "assistant", "content": [part]}
    return {
        "id": "resp_upstream_1",
        "object": "response",
        "created_at": 1764633600,
        "status": status,
        "model": model,
        "output": [message] if done else [],
        "usage": RESPONSE_USAGE if done else None,
        "error": None,
    }


def response_answer(model: str) -> bytes:
    return json.dumps(_response(model, "completed")).encode()


def response_events(model: str) -> list[bytes]:
    """The stream of a Responses answer, one server-sent event each (with its `event:` line)."""
    words = RESPONSE_TEXT.split(" ")
    events: list[dict[str, Any]] = [{"type": "response.created", "response": _response(model, "in_progress")}]
    where = {"item_id": "msg_up", "output_index": 0, "content_index": 0}
    events += [
        {"type": "response.output_text.delta", **where, "delta": word if i == 0 else " " + word}
        for i, word in enumerate(words)
    ]
    events += [
        {"type": "response.output_text.done", **where, "text": RESPONSE_TEXT},
        {"type": "response.completed", "response": _response(model, "completed")},
    ]
    return [
        f"event: {e['type']}\ndata: {json.dumps({**e, 'sequence_number': n})}\n\n".encode()
        for n, e in enumerate(events)
    ]


def tool_call_answer(model: str) -> dict[str, Any]:
    message = {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]}
    choice = {"index": 0, "message": message, "finish_reason": "tool_calls"}
    usage = {"prompt_tokens": 8, "completion_tokens": 5, "total_tokens": 13}
    return {
        "id": "chatcmpl-tool",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [choice],
        "usage": usage,
    }


def tool_call_deltas() -> list[tuple[dict[str, Any], str | None]]:
    """The same call streamed: its name with the arguments' first piece, then two more; then finish_reason
    tool_calls."""
    head = {"index": 0, "id": TOOL_CALL["id"], "type": "function"}
    arguments = TOOL_CALL["function"]["arguments"]
    first = {"name": "get_weather", "arguments": arguments[:4]}
    return [
        ({"role": "assistant", "tool_calls": [{**head, "function": first}]}, None),
        ({"tool_calls": [{"index": 0, "function": {"arguments": arguments[4:9]}}]}, None),
        ({"tool_calls": [{"index": 0, "function": {"arguments": arguments[9:]}}]}, None),
        ({}, "tool_calls"),
    ]
