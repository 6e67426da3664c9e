"""The OpenAI request shape the proxy accepts. Other fields are kept so that the router can name them in a
400, or pass them to the targets that declare them (FORWARDED_FIELDS, LiteLLMTarget.extra_fields)."""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_DEPTH = 64
MAX_VALUES = 50_000
"""A request nested deeper, or holding more JSON values, is refused before anything walks it again: the
bound on what one body under `limits.max_body_bytes` can cost to validate and to forward."""


def check_json(data: object) -> object:
    """Refuse, naming the place, text with a lone UTF-16 surrogate (JSON allows `"\\ud800"`, UTF-8 does
    not: such text cannot be tokenised, hashed or sent on), nesting beyond MAX_DEPTH and more than
    MAX_VALUES values. Iterative, so that no nesting can exhaust the interpreter's stack."""
    pending: list[tuple[object, str, int]] = [(data, "", 0)]
    seen = 0
    while pending:
        value, path, depth = pending.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise ValueError(f"the request holds more than {MAX_VALUES} JSON values")
        if depth > MAX_DEPTH:
            raise ValueError(f"{path} is nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, str):
            if not value.isascii() and not _encodes(value):
                raise ValueError(
                    f"{path or '(value)'} holds a lone UTF-16 surrogate, which is not valid Unicode text"
                )
            continue
        if isinstance(value, dict):
            children: Iterable[tuple[object, object]] = value.items()
        else:
            children = enumerate(value) if isinstance(value, list) else ()
        for key, child in children:
            if isinstance(key, str) and not _encodes(key):  # !a: the message itself must encode
                raise ValueError(f"the key {key!a} holds a lone UTF-16 surrogate")
            pending.append((child, f"{path}.{key}" if path else str(key), depth + 1))
    return data


def _encodes(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


CONTENT_PARTS: dict[str, dict[str, frozenset[str]]] = {
    "text": {"text": frozenset()},
    "image_url": {"image_url": frozenset({"url", "detail"})},
    "input_audio": {"input_audio": frozenset({"data", "format"})},
    "file": {"file": frozenset({"file_id", "file_data", "filename"})},
    "refusal": {"refusal": frozenset()},
}
"""OpenAI's content parts and the keys each may hold (beside `type`); others are refused. litellm acts on
some unknown keys, and on a `file_id` that is a URL it downloads the file from the router's host."""
MAX_CONTENT_PARTS = 1024
"""In one request, over all messages: the openai client transforms each part on the event loop."""


def _check_part(index: int, part: dict[str, Any]) -> None:
    where = f"part {index}"
    shape = CONTENT_PARTS.get(str(part.get("type")))
    if shape is None:
        raise ValueError(f"{where}.type must be one of {', '.join(CONTENT_PARTS)}")
    for key, value in part.items():
        if key != "type" and key not in shape:
            raise ValueError(f"{where}: a {part['type']} part takes no field '{key}'")
        inner = shape.get(key)
        if inner and not isinstance(value, dict):
            raise ValueError(f"{where}.{key} must be an object")
        if inner:
            extra = sorted(set(value) - inner)
            if extra:
                raise ValueError(f"{where}.{key} takes no field '{extra[0]}'")
    file_id = (part.get("file") or {}).get("file_id")
    if file_id is not None and not re.fullmatch(r"file-[A-Za-z0-9_-]{1,128}", str(file_id)):
        raise ValueError(f"{where}.file.file_id must be an uploaded file's id (file-...), not '{file_id}'")


# What a litellm target gets from the client besides model, messages and stream (which the router sets per
# target): OpenAI's chat-completions request fields, less those that act on the operator's account rather
# than on the answer (metadata, store, service_tier). Anything else is refused with a 400 unless the
# answering policy's targets declare it (LiteLLMTarget.extra_fields); see docs/upstream.md.
FORWARDED_FIELDS = frozenset(
    {
        "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "presence_penalty",
        "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "n", "seed", "response_format",
        "tools", "tool_choice", "parallel_tool_calls", "functions", "function_call", "user",
        "stream_options", "reasoning_effort", "verbosity", "modalities", "audio", "prediction",
        "web_search_options", "safety_identifier", "prompt_cache_key", "prompt_cache_retention",
    }
)  # fmt: skip
MESSAGE_FIELDS = frozenset(
    {"role", "content", "name", "tool_calls", "tool_call_id", "refusal", "function_call", "audio"}
)
"""The fields of a message OpenAI defines (for some role); a message with any other is refused."""


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    @field_validator("content")
    @classmethod
    def _known_parts(cls, content: str | list[dict[str, Any]] | None) -> object:
        for index, part in enumerate(content if isinstance(content, list) else ()):
            _check_part(index, part)
        return content

    def text(self) -> str:
        """The message as plain text; the local model reads text parts only."""
        if isinstance(self.content, list):
            return "".join(str(part.get("text", "")) for part in self.content if part.get("type") == "text")
        return self.content or ""


def plain(messages: list[ChatMessage]) -> list[dict[str, str]]:
    """Role and text only, the form chat templates take; a developer message is a system message there."""
    return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in messages]


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    messages: list[ChatMessage] | None = Field(None, min_length=1)
    question: str | None = Field(None, min_length=1)
    """Shorthand for a single user message."""
    max_tokens: int | None = Field(None, gt=0)

    _json = model_validator(mode="before")(check_json)

    @model_validator(mode="after")
    def _one_of(self) -> ScoreRequest:
        if (self.messages is None) == (self.question is None):
            raise ValueError("give either messages or question")
        return self

    def plain_messages(self) -> list[dict[str, str]]:
        if self.messages is not None:
            return plain(self.messages)
        return [{"role": "user", "content": self.question or ""}]


def within(asked: int | None, cap: int) -> int:
    """A client's token cap (None: none given), within `cap`."""
    return min(asked or cap, cap)


class ChatCompletionRequest(BaseModel):
    # strict: "stream": "yes" or "max_tokens": "10" is a client bug worth a 400, not a silent coercion.
    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(None, gt=0)
    max_completion_tokens: int | None = Field(None, gt=0)
    temperature: float | None = Field(None, ge=0, le=2)
    n: Literal[1] = 1
    user: str | None = Field(None, max_length=256)
    """An end-user tag that policy rules can match; never a metric label."""
    # OpenAI's own bounds, so that no client can make the forwarding step arbitrarily long.
    stop: str | list[str] | None = Field(None, max_length=4)
    logit_bias: dict[str, int] | None = Field(None, max_length=300)
    tools: list[dict[str, Any]] | None = Field(None, max_length=128)

    @field_validator("tools")
    @classmethod
    def _function_tools(cls, tools: list[dict[str, Any]] | None) -> object:
        # litellm acts on other tool types itself (an `mcp` tool sends it to an MCP gateway).
        for index, tool in enumerate(tools or ()):
            if tool.get("type") not in ("function", "custom"):
                raise ValueError(f"tools.{index}.type must be 'function' or 'custom'")
        return tools

    @model_validator(mode="after")
    def _bounded_parts(self) -> ChatCompletionRequest:
        parts = sum(len(m.content) for m in self.messages if isinstance(m.content, list))
        if parts > MAX_CONTENT_PARTS:
            raise ValueError(f"the messages hold {parts} content parts; at most {MAX_CONTENT_PARTS}")
        return self

    _json = model_validator(mode="before")(check_json)

    @property
    def token_cap(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def tokens_within(self, cap: int) -> int:
        """The client's token cap, within `cap` (a target's or the scorer's)."""
        return within(self.token_cap, cap)

    @property
    def structured(self) -> bool:
        """The client asked for output a program parses (JSON mode, a JSON schema, tool calls): nothing
        may be written around the answer."""
        kind = (self.model_extra or {}).get("response_format")
        asked_json = isinstance(kind, dict) and kind.get("type") in ("json_object", "json_schema")
        return asked_json or bool(self.tools) or bool((self.model_extra or {}).get("functions"))

    @property
    def has_tools(self) -> bool:
        """The request offers tools to call (`tools`, or the legacy `functions`): a policy fact."""
        return bool(self.tools) or bool((self.model_extra or {}).get("functions"))

    @property
    def tool_names(self) -> tuple[str, ...]:
        """The offered tools' names (a function's, a custom tool's, a legacy function's): a policy fact."""
        listed = [t.get(str(t.get("type"))) for t in self.tools or ()]
        functions = (self.model_extra or {}).get("functions")
        listed += functions if isinstance(functions, list) else []
        names = (spec.get("name") if isinstance(spec, dict) else None for spec in listed)
        return tuple(name for name in names if isinstance(name, str))

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))

    def plain_messages(self) -> list[dict[str, str]]:
        return plain(self.messages)

    def unknown_fields(self, declared: Collection[str] = ()) -> list[str]:
        """What the client sent that is neither forwarded to every target nor in `declared` (the policy's
        extra_fields), as paths: `foo`, `messages[0].bar`."""
        top = [k for k in self.model_extra or {} if k not in FORWARDED_FIELDS and k not in declared]
        nested = [
            f"messages[{i}].{k}"
            for i, message in enumerate(self.messages)
            for k in message.model_extra or {}
            if k not in MESSAGE_FIELDS
        ]
        return top + nested

    def forwarded(self, extra_fields: Collection[str] = ()) -> dict[str, Any]:
        """The fields a litellm target takes from the client: those set (not null) among FORWARDED_FIELDS and
        the target's `extra_fields`."""
        sent = self.model_dump(exclude_none=True, exclude_defaults=True)
        return {k: v for k, v in sent.items() if k in FORWARDED_FIELDS or k in extra_fields}

    def forwarded_messages(self) -> list[dict[str, Any]]:
        return [
            {k: v for k, v in m.model_dump(exclude_none=True).items() if k in MESSAGE_FIELDS}
            for m in self.messages
        ]


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    request_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    """The x-router-request-id of the answer this feedback is about."""
    correct: bool | None = None
    score: float | None = Field(None, ge=0, le=1)
    """A graded correctness, for answers that are partly right."""

    @model_validator(mode="after")
    def _one_of(self) -> FeedbackRequest:
        if (self.correct is None) == (self.score is None):
            raise ValueError("give either correct (true or false) or score (0..1)")
        return self

    @property
    def label(self) -> float:
        return float(self.correct) if self.correct is not None else float(self.score or 0.0)

    @property
    def outcome(self) -> str:
        if self.correct is None:
            return "graded"
        return "correct" if self.correct else "incorrect"
