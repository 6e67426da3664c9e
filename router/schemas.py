"""The OpenAI request shape the proxy accepts. Unknown fields are kept and passed on to litellm targets."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


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
    user: str | None = None

    @property
    def token_cap(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))

    def plain_messages(self) -> list[dict[str, str]]:
        return plain(self.messages)


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
