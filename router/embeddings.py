"""POST /v1/embeddings: a pass-through to the one remote target the policy names (`embeddings:`), unscored and
unrouted. The caller's key, limits and budget apply as for chat; the answer's tokens and dollars are metered
at the target's input price (embeddings have no output tokens)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from router.errors import APIError
from router.schemas import check_json
from router.targets import Embedded, TargetFailed

if TYPE_CHECKING:
    from policies import Policy
    from router.service import Router
    from router.stages.answering import Spent

MAX_INPUTS = 2048
"""OpenAI's bound on the inputs of one request."""


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request. Its fields only (a typo is a 400, not a field some upstream acts on)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(min_length=1)
    """Any name: the policy's embeddings target answers, with its own model."""
    input: str | list[str] | list[int] | list[list[int]]
    """A text, texts, a text's token ids, or several texts' token ids."""
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(None, gt=0)
    user: str | None = Field(None, max_length=256)

    _json = model_validator(mode="before")(check_json)

    @field_validator("input")
    @classmethod
    def _some_input(cls, given: str | list[Any]) -> object:
        if not given:
            raise ValueError("give at least one input")
        if isinstance(given, list) and len(given) > MAX_INPUTS:
            raise ValueError(f"at most {MAX_INPUTS} inputs per request; got {len(given)}")
        return given


def embeddings_target(policy: Policy) -> str:
    """The target the policy names for embeddings; a 404 in OpenAI's words when it names none."""
    if policy.embeddings is None:
        raise APIError(
            404,
            "This router serves no embeddings: its policy names no embeddings target",
            type="invalid_request_error",
            param="model",
            code="model_not_found",
        )
    return policy.embeddings


async def embed(router: Router, target: str, request: EmbeddingRequest, spent: Spent | None) -> Embedded:
    """The target's embeddings of `request`, metered; an upstream failure counted as a chat answer's is."""
    answerer = router.answering.targets[target]
    try:
        embedded = await answerer.embed(request.model_dump(exclude_none=True, exclude={"model"}))
    except APIError as exc:
        if isinstance(exc, TargetFailed) or exc.type == "upstream_error":
            router.metrics.upstream_failed(target, exc.code)
        raise
    usage = embedded.usage or {}
    tokens = usage.get("prompt_tokens") or usage.get("total_tokens") or 0
    tokens = tokens if isinstance(tokens, int) and tokens > 0 else 0
    cost = answerer.cost(tokens, 0)
    router.metrics.used(target, tokens, 0, cost)
    if spent is not None:
        spent(tokens, cost)
    return embedded
