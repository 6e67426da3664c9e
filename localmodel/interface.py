"""What callers hand the local model and get back from it, without torch: importing these names costs
nothing, so scorers, the service and policies' checks can name them without loading the model's code."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

Message = dict[str, Any]

Pooling = Literal["last", "last+mean"]
"""What a head reads of the prompt's states: the last token's, or that and the mean over every token.

The mean carries what the whole question is about, not only where it ends; on a data set left out of
training it transfers better than the last token alone (docs/scorer-quality.md).
"""


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
