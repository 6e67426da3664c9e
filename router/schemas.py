"""The OpenAI request shape the proxy accepts. Other fields are kept so that the router can name them in a
400, or pass them to the targets that declare them (FORWARDED_FIELDS, LiteLLMTarget.extra_fields)."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


def lone_surrogate(value: object, path: str = "") -> str | None:
    """The path of the first string holding a lone UTF-16 surrogate (JSON allows `"\\ud800"`, UTF-8 does
    not), or None. Such text cannot be tokenised, hashed or sent on, so it is refused up front."""
    if isinstance(value, str):
        if value.isascii():
            return None
        try:
            value.encode()
        except UnicodeEncodeError:
            return path or "(value)"
        return None
    if isinstance(value, dict):
        children: Iterable[tuple[object, object]] = value.items()
    else:
        children = enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        found = lone_surrogate(child, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None


def _valid_unicode(data: object) -> object:
    found = lone_surrogate(data)
    if found is not None:
        raise ValueError(f"{found} holds a lone UTF-16 surrogate, which is not valid Unicode text")
    return data


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

    _unicode = model_validator(mode="before")(_valid_unicode)

    @model_validator(mode="after")
    def _one_of(self) -> ScoreRequest:
        if (self.messages is None) == (self.question is None):
            raise ValueError("give either messages or question")
        return self

    def plain_messages(self) -> list[dict[str, str]]:
        if self.messages is not None:
            return plain(self.messages)
        return [{"role": "user", "content": self.question or ""}]


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

    _unicode = model_validator(mode="before")(_valid_unicode)

    @property
    def token_cap(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

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
