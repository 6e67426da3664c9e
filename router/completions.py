"""Build and transform OpenAI chat completions. Pure dict-to-dict functions, no I/O."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

from policies import Decision

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


def evidence_quality(confidence: float | None) -> str:
    if confidence is None:
        return "unknown"
    return "high" if confidence >= 0.7 else "medium" if confidence >= 0.4 else "low"


def failure_aware(body: Completion, decision: Decision) -> Completion:
    """Replace the content by {decision, answer, justification, evidence_quality} as JSON."""
    verdict = {"refuse": "refuse", "hedge": "uncertain"}.get(decision.action, "answer")
    confidence = "not scored" if decision.confidence is None else f"confidence {decision.confidence:.2f}"
    payload = {
        "decision": verdict,
        "answer": None if verdict == "refuse" else content_of(body),
        "justification": f"{confidence}; rule '{decision.rule}' chose {decision.action}"
        + (f" {decision.target}" if decision.target and decision.action != "refuse" else ""),
        "evidence_quality": evidence_quality(decision.confidence),
    }
    return with_content(body, json.dumps(payload, ensure_ascii=False))


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
