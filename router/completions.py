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


DECISIONS = ("answer", "uncertain", "refuse")
"""The failure-aware decisions, the least cautious first."""
EVIDENCE = ("high", "medium", "low", "unknown")
UNREADABLE = "the answerer's reply was not the failure-aware JSON"
UNJUSTIFIED = "the answerer gave no justification"
_FIELD = r'"{}"\s*:\s*("(?:[^"\\]|\\.)*")'


def verdict(action: str) -> str:
    """The failure-aware decision a router action stands for."""
    return {"refuse": "refuse", "hedge": "uncertain"}.get(action, "answer")


def failure_aware(body: Completion, decision: Decision, stated: bool = False) -> Completion:
    """Replace the content by {decision, answer, justification, evidence_quality} as JSON.

    `stated`: the content is an answerer's own failure-aware JSON (read with `read_stated`); the router's
    decision then only ever makes it more cautious, and its reason is added to the answerer's."""
    ruled = verdict(decision.action)
    confidence = "not scored" if decision.confidence is None else f"confidence {decision.confidence:.2f}"
    justification = f"{confidence}; rule '{decision.rule}' chose {decision.action}" + (
        f" {decision.target}" if decision.target and decision.action != "refuse" else ""
    )
    payload: dict[str, Any] = {
        "decision": ruled,
        "answer": None if ruled == "refuse" else content_of(body),
        "justification": justification,
        "evidence_quality": evidence_quality(decision.confidence),
    }
    if stated and ruled != "refuse":
        own = read_stated(content_of(body))
        final = max(ruled, own["decision"], key=DECISIONS.index)
        payload = {
            "decision": final,
            "answer": None if final == "refuse" else own["answer"],
            "justification": f"{own['justification']} ({justification})",
            "evidence_quality": own["evidence_quality"],
        }
    return with_content(body, json.dumps(payload, ensure_ascii=False))


def read_stated(text: str) -> dict[str, Any]:
    """An answerer's failure-aware reply, read so that it always yields the four fields.

    The first JSON object in the text is taken (a model may write words around it); without one, the
    `decision` and `answer` strings of a reply cut short are salvaged. Missing or malformed fields are
    filled in: an unreadable decision, or `answer` without an answer, is `uncertain`; a refusal carries no
    answer; evidence quality outside high/medium/low is `unknown`.
    """
    found = _first_object(text)
    readable = found is not None
    fields = found if found is not None else _salvaged(text)
    decision = str(fields.get("decision") or "").strip().lower()
    answer = _text(fields.get("answer"))
    if decision not in DECISIONS:
        readable, decision = False, "uncertain"
        if answer is None and found is None:
            answer = text.strip() or None  # plain words are still the model's answer
    if decision == "answer" and not answer:
        decision = "uncertain"
    justification = _text(fields.get("justification")) or (UNREADABLE if not readable else UNJUSTIFIED)
    quality = str(fields.get("evidence_quality") or "").strip().lower()
    return {
        "decision": decision,
        "answer": None if decision == "refuse" else answer,
        "justification": justification,
        "evidence_quality": quality if quality in EVIDENCE else "unknown",
    }


def _first_object(text: str) -> dict[str, Any] | None:
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _salvaged(text: str) -> dict[str, Any]:
    """The complete string fields of a JSON object cut short (an answer that reached its token cap)."""
    found: dict[str, Any] = {}
    for name in ("decision", "answer", "justification", "evidence_quality"):
        match = re.search(_FIELD.format(name), text)
        if match is not None:
            found[name] = json.loads(match.group(1))
    return found


def _text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value.strip() if isinstance(value, str) else None
    return json.dumps(value, ensure_ascii=False)


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
