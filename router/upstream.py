"""Where answers come from: the in-process model, or any model litellm can reach."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

from policies import LiteLLMTarget
from router.completions import Completion
from router.errors import APIError
from router.schemas import ChatCompletionRequest

# litellm fetches its model cost map from the internet at import unless told otherwise; we run offline.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

# Fields of ours, or that we set per target, that must not reach the provider from the client.
_NOT_FORWARDED = {"model", "messages", "stream", "api_base", "api_key", "base_url"}


class LiteLLMUpstream:
    def __init__(self, name: str, target: LiteLLMTarget) -> None:
        import litellm  # slow to import: only policies with remote targets pay for it

        self._litellm = litellm
        self.name, self.target = name, target

    def _arguments(self, request: ChatCompletionRequest) -> dict[str, Any]:
        forwarded = request.model_dump(exclude=_NOT_FORWARDED, exclude_none=True, exclude_defaults=True)
        arguments: dict[str, Any] = {
            **forwarded,
            "model": self.target.model,
            "messages": [m.model_dump(exclude_none=True) for m in request.messages],
            "timeout": self.target.timeout_s,
            "num_retries": self.target.num_retries,
        }
        if self.target.api_base:
            arguments["api_base"] = self.target.api_base
        if self.target.api_key_env:
            arguments["api_key"] = self._api_key(self.target.api_key_env)
        return arguments

    def _api_key(self, variable: str) -> str:
        key = os.environ.get(variable)
        if not key:
            message = f"target '{self.name}' has no API key: the environment variable {variable} is not set"
            raise APIError(502, message, type="upstream_error", code="missing_api_key")
        return key

    def _failed(self, exc: Exception) -> APIError:
        status = getattr(exc, "status_code", None)
        kind = type(exc).__name__
        return APIError(
            502,
            f"target '{self.name}' failed ({kind}{f', HTTP {status}' if status else ''})",
            type="upstream_error",
            code=kind,
        )

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Estimated US dollars from litellm's cost map; 0 for models it does not price (self-hosted ones)."""
        try:
            prompt, completion = self._litellm.cost_per_token(
                model=self.target.model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
            )
        except Exception:  # litellm raises a bare Exception for a model missing from its map
            return 0.0
        return float(prompt + completion)

    async def complete(self, request: ChatCompletionRequest) -> Completion:
        arguments = self._arguments(request)
        try:
            response = await self._litellm.acompletion(**arguments)
        except Exception as exc:
            raise self._failed(exc) from exc
        return dict(response.model_dump())

    async def stream(self, request: ChatCompletionRequest) -> AsyncIterator[Completion]:
        """Opens the stream before returning: a failing upstream is then an HTTP error, not a cut stream."""
        arguments = self._arguments(request)
        try:
            response = await self._litellm.acompletion(**arguments, stream=True)
        except Exception as exc:
            raise self._failed(exc) from exc

        async def chunks() -> AsyncIterator[Completion]:
            async for chunk in response:
                yield dict(chunk.model_dump(exclude_none=True))

        return chunks()
