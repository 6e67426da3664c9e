"""Build and transform OpenAI chat completions. Pure dict-to-dict functions, no I/O."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

from policies import Decision
from policies.failure_aware import failure_aware_text

Completion = dict[str, Any]


def completion(
    request_id: str,
    model: str,
    content: str,
    finish_reason: str,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
) -> Completion:
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def content_of(body: Completion) -> str:
    return body["choices"][0]["message"].get("content") or ""


def with_content(body: Completion, content: str) -> Completion:
    choice = body["choices"][0]
    message = {**choice["message"], "content": content}
    return {**body, "choices": [{**choice, "message": message}, *body["choices"][1:]]}


def hedge(body: Completion, template: str) -> Completion:
    # str.replace, not str.format: answers and templates may hold other braces.
    return with_content(body, template.replace("{answer}", content_of(body)))


def failure_aware(body: Completion, decision: Decision, stated: bool = False) -> Completion:
    """Replace the content by the failure-aware JSON for `decision` (policies/failure_aware.py).

    `stated`: the content is an answerer's own failure-aware JSON; the router's decision then only ever
    makes it more cautious."""
    return with_content(body, failure_aware_text(content_of(body), decision, stated))


def chunk_head(body_id: str, created: int, model: str) -> Completion:
    """The fields every chunk of one stream shares."""
    return {"id": body_id, "object": "chat.completion.chunk", "created": created, "model": model}


def chunk(head: Completion, delta: dict[str, Any], finish_reason: str | None = None) -> Completion:
    return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


def usage_chunk(head: Completion, usage: dict[str, int] | None) -> Completion:
    """The last chunk, sent only to a client that asked for usage (stream_options.include_usage)."""
    return {**head, "choices": [], "usage": usage}


def stream_chunks(body: Completion, include_usage: bool) -> Iterator[Completion]:
    """Replay a finished completion as streaming chunks, a word at a time."""
    choice = body["choices"][0]
    head = chunk_head(body["id"], body["created"], body["model"])
    yield chunk(head, {"role": "assistant", "content": ""})
    for piece in re.findall(r"\s*\S+|\s+", content_of(body)):
        yield chunk(head, {"content": piece})
    yield chunk(head, {}, choice.get("finish_reason") or "stop")
    if include_usage:
        yield usage_chunk(head, body.get("usage"))


def calls_tools(body: Completion) -> bool:
    """The answer is a call of the client's tools, not text to be read."""
    message = body["choices"][0]["message"]
    return bool(message.get("tool_calls") or message.get("function_call"))


def with_delta(chunk: Completion, delta: dict[str, Any]) -> Completion:
    """A stream chunk with its first choice's delta replaced."""
    choice = chunk["choices"][0]
    return {**chunk, "choices": [{**choice, "delta": delta}, *chunk["choices"][1:]]}
