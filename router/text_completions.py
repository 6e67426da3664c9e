"""POST /v1/completions, OpenAI's legacy text completions, converted at the edges of the chat path: the
request becomes a chat request whose one user message is the prompt (no system message, no template of the
router's), and the routed chat answer, whole or streamed, becomes a text completion. Router.route sees a
chat request like any other: it is scored, routed, metered and charged as one."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from router.completions import Completion
from router.errors import APIError
from router.schemas import ChatCompletionRequest, check_json
from router.stages.shaping import Routed
from router.targets import Chunks

CHAT_ONLY = frozenset(
    {"messages", "tools", "tool_choice", "functions", "function_call", "parallel_tool_calls"}
)
"""Chat fields the legacy API does not have: a text completion cannot carry a tool call."""
UNSUPPORTED = {"echo": False, "suffix": None, "best_of": 1, "logprobs": None}
"""Legacy fields with no chat counterpart, and the value each may have (the one that asks for nothing)."""


class CompletionRequest(BaseModel):
    """The legacy request: `prompt` and the fields a chat request shares with it, which are validated as a
    chat request's (router/schemas.py) once converted."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1)
    prompt: str | list[str]
    """One prompt: a string, or a list holding one string."""

    _json = model_validator(mode="before")(check_json)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: str | list[str]) -> object:
        if isinstance(prompt, list) and not prompt:
            raise ValueError("give one prompt")
        if isinstance(prompt, list) and len(prompt) > 1:
            raise ValueError(
                f"this router answers one prompt per request and got {len(prompt)}: send each prompt as "
                "a request of its own"
            )
        return prompt

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


def chat_request(request: CompletionRequest) -> ChatCompletionRequest:
    """The chat request that asks what `request` asks; a 400 in OpenAI's words for what it cannot."""
    fields = dict(request.model_extra or {})
    for name in fields:
        if name in CHAT_ONLY:
            raise APIError(
                400, f"Unrecognized request argument supplied: {name}", param=name, code="unknown_parameter"
            )
    for name, off in UNSUPPORTED.items():
        value = fields.pop(name, off)
        if value is not None and value != off:
            raise APIError(
                400,
                f"{name} is not supported by this router's text completions",
                param=name,
                code="unsupported_parameter",
            )
    fields.update(model=request.model, messages=[{"role": "user", "content": request.text}])
    try:
        return ChatCompletionRequest.model_validate(fields)
    except ValidationError as exc:  # the app's handler words it as for any request body
        raise RequestValidationError(exc.errors()) from exc


def as_text(routed: Routed) -> Routed:
    """The routed chat answer as a text completion (a stream as text completion chunks)."""
    completion_id = f"cmpl-{routed.request_id}"
    if routed.chunks is not None:
        return dataclasses.replace(routed, chunks=TextChunks(routed.chunks, completion_id))
    assert routed.body is not None
    choices = [
        {
            "index": choice.get("index", index),
            "text": (choice.get("message") or {}).get("content") or "",
            "finish_reason": choice.get("finish_reason"),
            "logprobs": None,
        }
        for index, choice in enumerate(routed.body["choices"])
    ]
    return dataclasses.replace(routed, body=_text(routed.body, completion_id, choices=choices))


def _text(chat: Completion, completion_id: str, choices: list[dict[str, Any]]) -> Completion:
    created, model = chat.get("created"), chat.get("model")
    body = {"id": completion_id, "object": "text_completion", "created": created, "model": model}
    body["choices"] = choices
    if "usage" in chat:
        body["usage"] = chat["usage"]
    return body


class TextChunks:
    """A routed chat stream as text completion chunks: each delta's content as `text`, a finish_reason as
    it comes, the usage chunk as it is; a chunk that says nothing else (the role's) is left out."""

    def __init__(self, chunks: Chunks, completion_id: str) -> None:
        self.chunks, self.completion_id = chunks, completion_id
        self._iterator = self._converted()

    def __aiter__(self) -> AsyncIterator[Completion]:
        return self._iterator

    async def aclose(self) -> None:
        await self._iterator.aclose()
        await self.chunks.aclose()

    async def _converted(self) -> AsyncGenerator[Completion]:
        async for chunk in self.chunks:
            said = chunk.get("choices") or []
            choices = [
                {
                    "index": choice.get("index", 0),
                    "text": (choice.get("delta") or {}).get("content") or "",
                    "finish_reason": choice.get("finish_reason"),
                    "logprobs": None,
                }
                for choice in said
                if (choice.get("delta") or {}).get("content") or choice.get("finish_reason")
            ]
            if choices or (not said and chunk.get("usage")):
                yield _text(chunk, self.completion_id, choices=choices)
