"""The `litellm` kind: any provider litellm translates for (router/targets/litellm.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from policies.targets.base import RemoteTarget


class LiteLLMTarget(RemoteTarget):
    """Any model litellm can call. Keys come from `api_key_env` or litellm's own environment variables."""

    kind: Literal["litellm"]
    model: str = Field(min_length=1)
    """litellm's model string: `provider/model`."""
