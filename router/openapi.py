"""The OpenAPI document as the service really answers.

FastAPI's generated document knows only the endpoints' signatures: it declares 422 with its own validation
body (the router answers 400 in the OpenAI error shape, router/errors.py), none of the other error statuses,
loose 200 bodies, and application/json for /metrics and for streamed completions. `install_openapi`
post-processes it once, on first use, into what the endpoints return.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request, params
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from policies.facts import TASK_FAMILIES
from policies.schema import VIRTUAL_MODEL

Document = dict[str, Any]

_ROUTED: dict[int, str] = {
    401: "auth: required and the Authorization header carries no key, or an unknown or revoked one",
    403: "The caller's key may not use the requested model",
    404: "The requested model is not one this router serves",
    413: "The request body is larger than the policy's limits.max_body_bytes, or a remote target's limit",
    429: "The caller's key is over its requests or tokens per minute (rate_limit_exceeded) or has spent "
    "its budget (budget_exceeded); or a remote target is rate-limiting the router",
    502: "A remote target failed, could not be reached, refused the router's credentials or has no key",
    503: "Not ready yet (the model is loading), overloaded (the scoring queue is full), shutting down, "
    "or a remote target asks to retry later",
    504: "A remote target did not answer in time",
}
"""The errors of a routed request, chat or legacy completions or a response, beside its own 400."""
_STORED: dict[int, str] = {
    401: "auth: required and the Authorization header carries no key, or an unknown or revoked one",
    404: "No response with this id is stored for the caller's key (made with store: false or by another "
    "key, deleted, or expired)",
    429: "The caller's key is over its requests per minute, or has spent its budget",
    503: "Not ready yet (the model is loading), shutting down, or (DELETE) the state store is unreachable "
    "and this replica cannot keep the delete for it",
}
"""The errors of reading or deleting a stored response."""

# Each operation's error statuses besides 500, which every operation may answer (router/errors.py).
ERRORS: dict[tuple[str, str], dict[int, str]] = {
    ("get", "/healthz"): {},
    ("get", "/readyz"): {},  # its 503 carries a Readiness body, not an error (see corrected)
    ("get", "/v1/models"): {
        401: "auth: required and the Authorization header carries no key, or an unknown or revoked one",
    },
    ("get", "/metrics"): {
        401: "auth: required and the Authorization header carries no key, or an unknown or revoked one",
        403: "auth: required and the key is not the admin key (metrics show every tenant's traffic)",
    },
    ("post", "/v1/chat/completions"): {
        **_ROUTED,
        400: "Invalid request (a field, an unknown field, too many messages, a prompt beyond the local "
        "model's limit), or a remote target rejected it",
    },
    ("post", "/v1/completions"): {
        **_ROUTED,
        400: "Invalid request (a field, several prompts, a chat-only or unsupported legacy field, a prompt "
        "beyond the local model's limit), or a remote target rejected it",
    },
    ("post", "/v1/responses"): {
        **_ROUTED,
        400: "Invalid request (a field, an unknown field, an input item the router cannot take, a "
        "previous_response_id not stored for the caller's key, a conversation over responses.max_bytes, "
        "tools for a target that takes none, a prompt beyond the local model's limit), or a remote target "
        "rejected it",
    },
    ("get", "/v1/responses/{response_id}"): _STORED,
    ("delete", "/v1/responses/{response_id}"): _STORED,
    ("post", "/v1/embeddings"): {
        400: "Invalid request (no input, a field of the wrong type, an unknown field), or the embeddings "
        "target rejected it",
        401: "auth: required and the Authorization header carries no key, or an unknown or revoked one",
        403: "The caller's key may not use the policy's embeddings target",
        404: "The policy names no embeddings target",
        413: "The request body is larger than the policy's limits.max_body_bytes, or the target's limit",
        429: "The caller's key is over its requests or tokens per minute (rate_limit_exceeded) or has spent "
        "its budget (budget_exceeded); or the target is rate-limiting the router",
        502: "The embeddings target failed, could not be reached, refused the router's credentials or has "
        "no key",
        503: "Not ready yet (the model is loading), shutting down, or the target asks to retry later",
        504: "The embeddings target did not answer in time",
    },
    ("post", "/v1/feedback"): {
        400: "Invalid request: give request_id and either correct or score",
        401: "auth: required and the Authorization header carries no key, or an unknown or revoked one",
        404: "No decision is logged for this request id (not kept: its answer said x-router-decision-kept: "
        "false; replaced by newer decisions of its key, older than the decision log keeps, unknown, or "
        "made with another key)",
        409: "Feedback with a different label was already recorded for this request id",
        413: "The request body is larger than the policy's limits.max_body_bytes",
        503: "Not ready yet (the model is loading), or the state store is unreachable: not recorded",
    },
    ("post", "/v1/score"): {
        400: "Invalid request: give either messages or question; or a prompt beyond the model's limit",
        401: "auth: required and the Authorization header carries no key, or an unknown or revoked one",
        413: "The request body is larger than the policy's limits.max_body_bytes",
        429: "The caller's key is over its requests or tokens per minute, or has spent its budget",
        503: "Not ready yet (the model is loading) or overloaded (the scoring queue is full)",
    },
    ("post", "/admin/reload"): {
        400: "The policy file failed to load; the old policy keeps serving",
        401: "The Authorization header is missing or does not carry the admin key",
        403: "Admin endpoints are off: the server was started without an admin key",
        409: "Nothing to reload: the server was not started from a policy file",
        503: "Not ready yet: the model is loading",
    },
}

UPSTREAM_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings"})
"""The operations that may pass on a remote target's failure, with its retry headers."""

SERVER_ERROR = "An unexpected failure of the router (the server's log has the traceback)"

_NULLABLE_STRING = {"anyOf": [{"type": "string"}, {"type": "null"}]}
_PROBABILITY = {"type": "number", "minimum": 0, "maximum": 1}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "title": "Error",
        "description": "OpenAI's error shape, so that SDKs raise their usual exceptions.",
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string", "examples": ["invalid_request_error", "server_error"]},
                    "param": _NULLABLE_STRING,
                    "code": _NULLABLE_STRING,
                },
                "required": ["message", "type", "param", "code"],
            }
        },
        "required": ["error"],
    },
    "Health": {
        "type": "object",
        "properties": {"status": {"const": "ok"}},
        "required": ["status"],
    },
    "Readiness": {
        "type": "object",
        "properties": {
            "status": {"enum": ["ready", "loading", "failed"]},
            "error": {"type": "string", "description": "Why loading failed (status `failed` only)."},
            "store": {
                "enum": ["ok", "degraded", "memory"],
                "description": "The state store (status `ready` only): Redis answering, Redis unreachable "
                "(served from this replica's local state, writes kept for replay), or in-process only.",
            },
            "eviction": {
                "type": "object",
                "description": "With Redis (status `ready` only), its eviction settings as read at start-up: "
                "`safe` is false when its maxmemory-policy (allkeys-*) may evict API keys and budgets, null "
                "when Redis would not say (`warning` says why and what to set).",
                "properties": {
                    "policy": _NULLABLE_STRING,
                    "maxmemory_bytes": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
                    "safe": {"anyOf": [{"type": "boolean"}, {"type": "null"}]},
                    "warning": {"type": "string"},
                },
                "required": ["policy", "maxmemory_bytes", "safe"],
            },
        },
        "required": ["status"],
    },
    "ModelList": {
        "type": "object",
        "properties": {
            "object": {"const": "list"},
            "data": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "object": {"const": "model"},
                        "created": {"type": "integer"},
                        "owned_by": {"type": "string"},
                    },
                    "required": ["id", "object", "created", "owned_by"],
                },
            },
        },
        "required": ["object", "data"],
    },
    "Usage": {
        "type": "object",
        "properties": {
            "prompt_tokens": {"type": "integer", "minimum": 0},
            "completion_tokens": {"type": "integer", "minimum": 0},
            "total_tokens": {"type": "integer", "minimum": 0},
        },
        "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
    },
    "ChatCompletion": {
        "description": "An OpenAI chat completion; a remote target's own fields pass through.",
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "chat.completion"},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "properties": {
                        "index": {"type": "integer"},
                        "message": {
                            "type": "object",
                            "properties": {"role": {"const": "assistant"}, "content": _NULLABLE_STRING},
                            "required": ["role"],
                        },
                        "finish_reason": _NULLABLE_STRING,
                    },
                    "required": ["index", "message"],
                },
            },
            "usage": {"anyOf": [{"$ref": "#/components/schemas/Usage"}, {"type": "null"}]},
        },
        "required": ["id", "object", "created", "model", "choices"],
    },
    "ChatCompletionChunk": {
        "description": "One event of a streamed completion; the last one carries usage when "
        "stream_options.include_usage is set.",
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "chat.completion.chunk"},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "index": {"type": "integer"},
                        "delta": {"type": "object"},
                        "finish_reason": _NULLABLE_STRING,
                    },
                    "required": ["index", "delta"],
                },
            },
            "usage": {"anyOf": [{"$ref": "#/components/schemas/Usage"}, {"type": "null"}]},
        },
        "required": ["id", "object", "created", "model", "choices"],
    },
    "TextCompletion": {
        "description": "A legacy text completion (POST /v1/completions): the routed answer's text.",
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "text_completion"},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {"type": "array", "items": {"$ref": "#/components/schemas/TextChoice"}},
            "usage": {"anyOf": [{"$ref": "#/components/schemas/Usage"}, {"type": "null"}]},
        },
        "required": ["id", "object", "created", "model", "choices"],
    },
    "TextChoice": {
        "type": "object",
        "properties": {
            "index": {"type": "integer"},
            "text": {"type": "string"},
            "finish_reason": _NULLABLE_STRING,
            "logprobs": {"type": "null"},
        },
        "required": ["index", "text", "finish_reason"],
    },
    "ResponseObject": {
        "description": "An OpenAI Response object: the target's own where it speaks the Responses API "
        "(passed on as it came), else the routed chat answer's: a message item with `output_text`, and a "
        "`function_call` item per tool call.",
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "response"},
            "created_at": {"type": "number"},
            "status": {"enum": ["completed", "incomplete", "failed", "in_progress", "cancelled", "queued"]},
            "model": {"type": "string"},
            "output": {
                "type": "array",
                "items": {"type": "object", "properties": {"type": {"type": "string"}}, "required": ["type"]},
            },
            "usage": {
                "anyOf": [
                    {
                        "type": "object",
                        "properties": {
                            "input_tokens": {"type": "integer", "minimum": 0},
                            "output_tokens": {"type": "integer", "minimum": 0},
                            "total_tokens": {"type": "integer", "minimum": 0},
                        },
                        "required": ["input_tokens", "output_tokens", "total_tokens"],
                    },
                    {"type": "null"},
                ]
            },
            "error": {"anyOf": [{"type": "object"}, {"type": "null"}]},
        },
        "required": ["id", "object", "created_at", "status", "model", "output"],
    },
    "ResponseEvent": {
        "description": "One event of a streamed response (`response.created` ... `response.completed`, or "
        "`response.failed` when the stream fails after its headers); its `type` is also the SSE event name.",
        "type": "object",
        "properties": {"type": {"type": "string"}, "sequence_number": {"type": "integer", "minimum": 0}},
        "required": ["type"],
    },
    "ResponseDeleted": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "response.deleted"},
            "deleted": {"const": True},
        },
        "required": ["id", "object", "deleted"],
    },
    "Embeddings": {
        "description": "The embeddings target's own answer, passed on as it came.",
        "type": "object",
        "properties": {
            "object": {"type": "string", "examples": ["list"]},
            "data": {"type": "array", "items": {"type": "object"}},
            "model": {"type": "string"},
            "usage": {"anyOf": [{"type": "object"}, {"type": "null"}]},
        },
        "required": ["data"],
    },
    "StreamError": {
        "description": "The last event before [DONE] when a stream fails after its headers were sent.",
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": _NULLABLE_STRING,
                    "code": _NULLABLE_STRING,
                },
                "required": ["message", "type"],
            }
        },
        "required": ["error"],
    },
    "FeedbackRecorded": {
        "type": "object",
        "properties": {
            "request_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
            "status": {"enum": ["recorded", "duplicate"]},
        },
        "required": ["request_id", "status"],
    },
    "Scored": {
        "type": "object",
        "properties": {
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "raw_score": {"type": "number"},
            "confidences": {
                "type": "object",
                "description": "Each model the scorer predicts -> its chance of a right answer",
                "additionalProperties": {"type": "number", "minimum": 0, "maximum": 1},
            },
            "raw_scores": {"type": "object", "additionalProperties": {"type": "number"}},
            "task": {
                "description": "The likeliest kind of request (see x-router-task); null when the scorer "
                "has no task head",
                "anyOf": [{"enum": list(TASK_FAMILIES)}, {"type": "null"}],
            },
            "task_probabilities": {
                "description": "Each task family -> its probability (they sum to 1); null without a task "
                "head",
                "anyOf": [{"type": "object", "additionalProperties": _PROBABILITY}, {"type": "null"}],
            },
            "scorer": {"type": "string"},
            "scorer_version": {"type": "string"},
            "latency_ms": {"type": "number", "minimum": 0},
        },
        "required": [
            "confidence",
            "raw_score",
            "confidences",
            "raw_scores",
            "task",
            "task_probabilities",
            "scorer",
            "scorer_version",
            "latency_ms",
        ],
    },
    "Reloaded": {
        "type": "object",
        "properties": {
            "status": {"const": "reloaded"},
            "policy": {"type": "string"},
            "scorer_version": {"type": "string"},
            "calibrator": _NULLABLE_STRING,
        },
        "required": ["status", "policy", "scorer_version", "calibrator"],
    },
}


def _json(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}


def _sse_event(chunk: str) -> dict[str, Any]:
    """One server-sent event (OpenAPI before 3.2 has a stream's `schema` describe each of its events): a
    `chunk` as JSON, a StreamError when the stream fails after its headers, and last `[DONE]`."""
    return {
        "type": "object",
        "properties": {
            "data": {
                "type": "string",
                "if": {"const": "[DONE]"},
                "else": {
                    "contentMediaType": "application/json",
                    "contentSchema": {
                        "anyOf": [
                            {"$ref": f"#/components/schemas/{chunk}"},
                            {"$ref": "#/components/schemas/StreamError"},
                        ]
                    },
                },
            }
        },
        "required": ["data"],
    }


def _response_event() -> dict[str, Any]:
    """One server-sent event of a streamed response: its name, and its data a ResponseEvent as JSON."""
    return {
        "type": "object",
        "properties": {
            "event": {"type": "string"},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": {"$ref": "#/components/schemas/ResponseEvent"},
            },
        },
        "required": ["data"],
    }


DECISION_HEADERS: dict[str, dict[str, Any]] = {
    "x-router-request-id": {
        "description": "32 hex digits, unique per request: the id `POST /v1/feedback` takes",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
    },
    "x-router-confidence": {
        "description": "The certainty the policy acted on, 0..1; absent when the matching rule needed none",
        "required": False,
        "schema": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "x-router-confidences": {
        "description": "Only after a `pick` rule: each candidate and its confidence, cheapest first "
        "(`small=0.3120,large=0.7410`)",
        "required": False,
        "schema": {"type": "string"},
    },
    "x-router-task": {
        "description": "The kind of request the scorer's task head saw (its likeliest task family); absent "
        "when the request was not scored or the scorer has no task head",
        "required": False,
        "schema": {"enum": list(TASK_FAMILIES)},
    },
    "x-router-scorer": {
        "description": "The scorer version in force, as `scorer_version` in `POST /v1/score` and "
        "`POST /admin/reload` (a head scorer's: `head:`, a digest of its folder's weights and calibrators, "
        "its layer and pooling; `sha256:` and 16 hex digits for a version that is not short printable "
        "ASCII); a reload that replaces the scorer changes it",
        "required": True,
        "schema": {"type": "string"},
    },
    "x-router-decision": {
        "description": "What the policy did: `answer`, `escalate`, `hedge` or `refuse`",
        "required": True,
        "schema": {"enum": ["answer", "escalate", "hedge", "refuse"]},
    },
    "x-router-target": {
        "description": "The target that produced the answer (the rule's, or a fallback), or `none` for a "
        "refusal",
        "required": True,
        "schema": {"type": "string"},
    },
    "x-router-rule": {
        "description": "The name (or `rules[i]`) of the rule that matched",
        "required": True,
        "schema": {"type": "string"},
    },
    "x-router-decision-kept": {
        "description": "`true` when the decision log keeps this decision for `POST /v1/feedback` (the "
        "request sent `x-router-feedback: keep`, or the policy's `monitoring.decisions.sample` picked it), "
        "else `false`",
        "required": True,
        "schema": {"enum": ["true", "false"]},
    },
    "x-router-fallback": {
        "description": "Only when a fallback answered: each target passed over and why, e.g. "
        "`large:server,medium:cooling_down` (docs/upstream.md)",
        "required": False,
        "schema": {"type": "string"},
    },
    "x-router-session": {
        "description": "Only for a turn of a conversation the policy's `sessions:` pins: `new` when this "
        "turn set the pin (a first turn, or an escalation that moved it), `pinned` when the pinned target "
        "answered ([policies.md](policies.md#sessions))",
        "required": False,
        "schema": {"enum": ["new", "pinned"]},
    },
}
"""The headers every answer of POST /v1/chat/completions, POST /v1/completions and POST /v1/responses carries,
streamed or not:
the one list, which docs/reference.md's table repeats word for word (tests/test_reference_doc.py holds it to
that)."""

# Each operation's 200, as it is really sent.
SUCCESS: dict[tuple[str, str], dict[str, Any]] = {
    ("get", "/healthz"): {"description": "The process is up", "content": _json("Health")},
    ("get", "/readyz"): {
        "description": "The model is loaded: requests are served",
        "content": _json("Readiness"),
    },
    ("get", "/v1/models"): {
        "description": "The model names this router serves",
        "content": _json("ModelList"),
    },
    ("get", "/metrics"): {
        "description": "Prometheus text exposition format (content type text/plain; version=...)",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    },
    ("post", "/v1/chat/completions"): {
        "description": "A chat completion, or with `stream: true` its chunks as server-sent events",
        "headers": DECISION_HEADERS,
        "content": {
            **_json("ChatCompletion"),
            "text/event-stream": {"schema": _sse_event("ChatCompletionChunk")},
        },
    },
    ("post", "/v1/completions"): {
        "description": "A text completion, or with `stream: true` its chunks as server-sent events",
        "headers": DECISION_HEADERS,
        "content": {
            **_json("TextCompletion"),
            "text/event-stream": {"schema": _sse_event("TextCompletion")},
        },
    },
    ("post", "/v1/responses"): {
        "description": "A Response object, or with `stream: true` its events as server-sent events",
        "headers": DECISION_HEADERS,
        "content": {**_json("ResponseObject"), "text/event-stream": {"schema": _response_event()}},
    },
    ("get", "/v1/responses/{response_id}"): {
        "description": "The stored response, as its client got it",
        "headers": {"x-router-request-id": DECISION_HEADERS["x-router-request-id"]},
        "content": _json("ResponseObject"),
    },
    ("delete", "/v1/responses/{response_id}"): {
        "description": "The stored response is deleted",
        "headers": {"x-router-request-id": DECISION_HEADERS["x-router-request-id"]},
        "content": _json("ResponseDeleted"),
    },
    ("post", "/v1/embeddings"): {
        "description": "The embeddings target's answer, as it sent it",
        "headers": {
            "x-router-request-id": DECISION_HEADERS["x-router-request-id"],
            "x-router-target": {
                "description": "The policy's embeddings target",
                "required": True,
                "schema": {"type": "string"},
            },
        },
        "content": _json("Embeddings"),
    },
    ("post", "/v1/feedback"): {
        "description": "Recorded, or a repeat of a label already recorded",
        "content": _json("FeedbackRecorded"),
    },
    ("post", "/v1/score"): {
        "description": "The scorer's confidence in the conversation",
        "content": _json("Scored"),
    },
    ("post", "/admin/reload"): {
        "description": "The policy file is serving now",
        "content": _json("Reloaded"),
    },
}

_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying",
        "schema": {"type": "integer", "minimum": 0},
    }
}
_SHOULD_RETRY = {
    "x-should-retry": {
        "description": "`false` when retrying cannot help, or the router already retried (the openai SDKs "
        "honour it)",
        "schema": {"enum": ["true", "false"]},
    }
}
_WWW_AUTHENTICATE = {"WWW-Authenticate": {"required": True, "schema": {"const": "Bearer"}}}

REQUEST_EXAMPLES: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/v1/chat/completions"): {
        "model": VIRTUAL_MODEL,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 4,
    },
    ("post", "/v1/completions"): {
        "model": VIRTUAL_MODEL,
        "prompt": "The capital of France is",
        "max_tokens": 4,
    },
    ("post", "/v1/responses"): {
        "model": VIRTUAL_MODEL,
        "input": "What is the capital of France?",
        "max_output_tokens": 4,
    },
    ("post", "/v1/embeddings"): {"model": "text-embedding-3-small", "input": "The capital of France"},
    ("post", "/v1/score"): {"question": "What is the capital of France?"},
}


def _error(description: str, status: int, upstream: bool) -> dict[str, Any]:
    """`upstream`: the operation may pass on a remote target's failure, with its retry headers."""
    headers: dict[str, Any] = {}
    if status in (429, 503):
        headers |= _RETRY_AFTER
    if status == 401:
        headers |= _WWW_AUTHENTICATE
    if upstream and status != 404:
        headers |= _SHOULD_RETRY
    response: dict[str, Any] = {"description": description, "content": _json("Error")}
    if headers:
        response["headers"] = headers
    return response


def corrected(generated: Document) -> Document:
    """The generated document with the router's real responses (a new document; `generated` is kept)."""
    document = copy.deepcopy(generated)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas.update(copy.deepcopy(SCHEMAS))
    for path, item in document["paths"].items():
        for method, operation in item.items():
            key = (method, path)
            if key not in ERRORS:
                raise KeyError(f"router/openapi.py does not know the responses of {method.upper()} {path}")
            responses: dict[str, Any] = {"200": copy.deepcopy(SUCCESS[key])}
            upstream = path in UPSTREAM_PATHS
            for status, description in ERRORS[key].items():
                responses[str(status)] = _error(description, status, upstream)
            if path == "/readyz":
                responses["503"] = {
                    "description": "Not ready: the model is loading, or failed to load (`error` says why)",
                    "content": _json("Readiness"),
                }
            responses["500"] = _error(SERVER_ERROR, 500, upstream=False)
            operation["responses"] = dict(sorted(responses.items()))
            if key in REQUEST_EXAMPLES:
                body = operation["requestBody"]["content"]["application/json"]
                body["example"] = REQUEST_EXAMPLES[key]
    return document


def install_openapi(app: FastAPI, guard: Sequence[params.Depends]) -> None:
    """Serve the corrected document, built once on first use, at /openapi.json and in Swagger UI at /docs,
    each behind `guard` (the key check of the other endpoints: with `auth: required` the document is no
    more public than the endpoints it describes). `app` must be made with `openapi_url`, `docs_url` and
    `redoc_url` None, so that FastAPI serves no unguarded copy."""
    if app.openapi_url or app.docs_url or app.redoc_url:
        raise ValueError("make the app with openapi_url=None, docs_url=None, redoc_url=None")
    generate: Callable[[], Document] = app.openapi  # FastAPI's own, which caches in app.openapi_schema

    def openapi() -> Document:
        if app.openapi_schema is None:
            app.openapi_schema = corrected(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/openapi.json", include_in_schema=False, dependencies=list(guard))
    async def openapi_json() -> JSONResponse:
        return JSONResponse(openapi())

    @app.get("/docs", include_in_schema=False, dependencies=list(guard))
    async def swagger_ui(request: Request) -> HTMLResponse:
        # The document is in the page: a browser fetching /openapi.json on its own would not send the key.
        return get_swagger_ui_html(
            openapi_url=request.scope.get("root_path", "").rstrip("/") + "/openapi.json",
            title=f"{app.title} - Swagger UI",
            swagger_ui_parameters={"spec": openapi()},
        )
