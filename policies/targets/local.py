"""The `local` kind: answers written in-process by the scorer's own model (router/targets/local.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from policies.targets.base import Cost, Target


class LocalTarget(Target):
    """Generation in-process with the scorer's model."""

    kind: Literal["local"]
    max_tokens: int = Field(256, gt=0)
    cost: Cost | None = None
    """None: free (the replica's own cores)."""
    accepts_tools: bool = False
    """Whether it may answer a request that offers tools. The local model cannot call them: it answers in
    text, the tools unused. False: a rule that sends such a request here is a 400 (docs/policies.md)."""
    answerer: str | None = None
    """A failure-aware answerer folder (`router train-answerer`): the target answers with that adapter on
    the scorer's model, stating its own decision in the failure-aware JSON (needs `failure_aware: true`).
    Relative paths are relative to the policy file."""
