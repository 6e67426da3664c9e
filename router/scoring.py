"""Scorers estimate the chance that an answer to a conversation is correct.

One abstract method scores a batch. Post-generation scorers return the draft they judged, so that the
local target can answer with exactly the text the confidence is about.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from router.local_model import Draft, LocalModel, Message


@dataclass(frozen=True)
class Conversation:
    messages: list[Message]
    max_new_tokens: int


@dataclass(frozen=True)
class Score:
    confidence: float
    draft: Draft | None = None


class Scorer(ABC):
    name: str

    @abstractmethod
    def score_batch(self, conversations: list[Conversation]) -> list[Score]:
        """Blocking; the service runs it on the model's worker thread."""


class NProbScorer(Scorer):
    """Length-normalised probability of the local model's own greedy draft (a cascade baseline)."""

    name = "nprob"

    def __init__(self, model: LocalModel) -> None:
        self.model = model

    def score_batch(self, conversations: list[Conversation]) -> list[Score]:
        drafts = [self.model.draft(c.messages, c.max_new_tokens) for c in conversations]
        return [Score(d.nprob, d) for d in drafts]


SCORERS: dict[str, type[NProbScorer]] = {"nprob": NProbScorer}
