"""The `openai` kind: an OpenAI-compatible API called directly (router/targets/openai.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from policies.targets.base import RemoteTarget


class OpenAITarget(RemoteTarget):
    """An OpenAI-compatible chat-completions API (OpenAI, vLLM, llama.cpp, another router...), called over one
    pooled HTTP client, its answers passed through as they come: no litellm on the request path."""

    kind: Literal["openai"]
    model: str = Field(min_length=1)
    """The upstream's own model name, sent as it is (no provider prefix)."""
    api_base: str = Field(pattern=r"^https?://\S+$")
    """The API's base URL, up to and including /v1 (the router POSTs to `{api_base}/chat/completions`)."""
