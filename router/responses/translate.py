"""Responses to chat and back. Pure dict-to-dict functions, no I/O.

To chat: `instructions` become a system message before the conversation; message items become chat
messages (their parts' text joined); a run of `function_call` items becomes the `tool_calls` of one
assistant message (the one before it, when that is an assistant's); a `function_call_output` becomes a
`tool` message. Function tools take chat's nested form, max_output_tokens becomes max_tokens.

Back: a chat completion becomes a Response object whose output is a message with the answer's text as
`output_text` (when it has text, or no tool calls) and a `function_call` item per tool call; a finish for
length is status `incomplete`, any other `completed`; usage becomes input, output and total tokens.
"""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from router.completions import Completion
from router.responses.request import Item, ResponsesRequest, part_text
from router.schemas import ChatCompletionRequest

Response = dict[str, Any]


def chat_messages(items: list[Item]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for item in items:
        kind = item["type"]
        if kind == "message":
            messages.append({"role": item["role"], "content": part_text(item["content"])})
        elif kind == "function_call":
            call = {"id": item["call_id"], "type": "function"}
            call["function"] = {"name": item["name"], "arguments": item["arguments"]}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        else:
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]})
    return messages


def chat_request(request: ResponsesRequest, items: list[Item]) -> ChatCompletionRequest:
    """The chat request that asks what `request` asks, its conversation `items` (the stored one and the new
    input, when it continues a previous response)."""
    system = [{"role": "system", "content": request.instructions}] if request.instructions else []
    fields: dict[str, Any] = {"model": request.model, "messages": system + chat_messages(items)}
    if request.stream:  # usage is what response.completed reports
        fields.update(stream=True, stream_options={"include_usage": True})
    if request.max_output_tokens is not None:
        fields["max_tokens"] = request.max_output_tokens
    if request.tools:
        fields["tools"] = [
            {"type": "function", "function": {k: v for k, v in tool.items() if k != "type"}}
            for tool in request.tools
        ]
    choice = request.tool_choice
    if isinstance(choice, dict):
        fields["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    elif choice is not None:
        fields["tool_choice"] = choice
    for name in ("parallel_tool_calls", "temperature", "top_p", "user"):
        if getattr(request, name) is not None:
            fields[name] = getattr(request, name)
    try:
        return ChatCompletionRequest.model_validate(fields)
    except ValidationError as exc:  # the app's handler words it as for any request body
        raise RequestValidationError(exc.errors()) from exc


def skeleton(response_id: str, request: ResponsesRequest, model: str) -> Response:
    """A Response object for `request` before its answer: status in_progress, no output, no usage."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "error": None,
        "incomplete_details": None,
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "metadata": request.metadata or {},
        "model": model,
        "output": [],
        "parallel_tool_calls": True if request.parallel_tool_calls is None else request.parallel_tool_calls,
        "previous_response_id": request.previous_response_id,
        "store": request.store,
        "temperature": request.temperature,
        "text": {"format": {"type": "text"}},
        "tool_choice": request.tool_choice or "auto",
        "tools": request.tools or [],
        "top_p": request.top_p,
        "truncation": "disabled",
        "usage": None,
        "user": request.user,
    }


def message_item(item_id: str, text: str, status: str = "completed") -> Item:
    part = {"type": "output_text", "text": text, "annotations": []}
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": [part]}


def call_item(item_id: str, call: dict[str, Any], status: str = "completed") -> Item:
    function = call.get("function") or {}
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call.get("id") or item_id,
        "name": function.get("name") or "",
        "arguments": function.get("arguments") or "",
        "status": status,
    }


def usage(chat: object) -> dict[str, Any] | None:
    if not isinstance(chat, dict):
        return None
    given, written = chat.get("prompt_tokens") or 0, chat.get("completion_tokens") or 0
    return {
        "input_tokens": given,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": written,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": given + written,
    }


def finished(response: Response, output: list[Item], finish_reason: str | None, used: object) -> Response:
    """`response` (a skeleton) with its output and usage, completed, or incomplete when cut for length."""
    done = {**response, "output": output, "usage": usage(used), "status": "completed"}
    if finish_reason == "length":
        done.update(status="incomplete", incomplete_details={"reason": "max_output_tokens"})
    return done


def from_chat(body: Completion, response: Response) -> Response:
    """The Response object of a whole chat completion, `response` its skeleton."""
    choice = body["choices"][0]
    message = choice.get("message") or {}
    calls = message.get("tool_calls") or []
    suffix = response["id"].removeprefix("resp_")
    output = []
    if message.get("content") or not calls:
        output.append(message_item(f"msg_{suffix}", str(message.get("content") or "")))
    output += [call_item(f"fc_{suffix}_{i}", call) for i, call in enumerate(calls)]
    named = {**response, "model": body.get("model") or response["model"]}
    return finished(named, output, choice.get("finish_reason"), body.get("usage"))


def stored_output(response: Response) -> list[Item]:
    """A Response object's output as conversation items in their canonical form: its messages and function
    calls (other items, such as reasoning, are the upstream's own, and not sent back)."""
    items: list[Item] = []
    for item in response.get("output") or ():
        if not isinstance(item, dict):
            continue
        if item.get("type") == "message":
            parts = [
                p for p in item.get("content") or () if isinstance(p, dict) and p.get("type") == "output_text"
            ]
            text = "".join(str(part.get("text") or "") for part in parts)
            items.append({"type": "message", "role": "assistant", "content": text})
        elif item.get("type") == "function_call":
            fields = ("call_id", "name", "arguments")
            items.append({"type": "function_call", **{k: str(item.get(k) or "") for k in fields}})
    return items


def size(items: list[Item]) -> int:
    """A conversation's size as stored: its items as JSON, in bytes."""
    return len(json.dumps(items, ensure_ascii=False).encode())
