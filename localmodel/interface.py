"""What callers hand the local model and get back from it, without torch: importing these names costs
nothing, so scorers, the service and policies' checks can name them without loading the model's code."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Literal

Message = dict[str, Any]

Pooling = Literal["last", "last+mean"]
"""What a head reads of the prompt's states: the last token's, or that and the mean over every token.

The mean carries what the whole question is about, not only where it ends; on a data set left out of
training it transfers better than the last token alone (docs/scorer-quality.md).
"""

Precision = Literal["auto", "fp32", "bf16"]
"""The head scorer's forward pass (localmodel/reduced.py): auto is bf16 on a CPU with AMX, else the model's
own dtype (fp32 on CPU, bf16 on CUDA); bf16 asks for it on any CPU; fp32 reads the model itself."""
PRECISIONS: tuple[Precision, ...] = ("auto", "fp32", "bf16")
PRECISION_ENV = "ROUTER_SCORER_PRECISION"
"""Overrides the policy's `scorer.precision` on this machine (`router serve --scorer-precision`)."""


def precision_override() -> Precision | None:
    """The operator's choice for this machine, if any: `ROUTER_SCORER_PRECISION`."""
    value = os.environ.get(PRECISION_ENV, "").strip().lower()
    if not value:
        return None
    for precision in PRECISIONS:
        if value == precision:
            return precision
    raise ValueError(f"{PRECISION_ENV}={value!r}: expected one of {', '.join(PRECISIONS)}")


@dataclass(frozen=True)
class Draft:
    """A generated answer with the log-probability of each of its tokens."""

    text: str
    token_logprobs: tuple[float, ...]
    prompt_tokens: int
    finish_reason: Literal["stop", "length"]

    @property
    def completion_tokens(self) -> int:
        return len(self.token_logprobs)

    @property
    def nprob(self) -> float:
        """Length-normalised sequence probability: the geometric mean of the token probabilities."""
        if not self.token_logprobs:
            return 0.0
        return math.exp(sum(self.token_logprobs) / len(self.token_logprobs))


class Aborted(Exception):
    """The job's caller went away (a client disconnected, the server is shutting down): the forward pass
    stopped at the next decoder layer."""
