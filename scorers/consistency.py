from __future__ import annotations

from typing import TYPE_CHECKING

from localmodel.answers import same_answer
from scorers.base import RawScore, ScoreItem, Scorer, ScorerSettings

if TYPE_CHECKING:
    from localmodel import LocalModel


class ConsistencyScorer(Scorer, method="consistency"):
    """Share of k sampled answers that agree with the greedy answer (baseline, and EliCal's stage-1 label)."""

    def __init__(self, model: LocalModel, samples: int = 5, temperature: float = 0.7) -> None:
        if samples < 1:
            raise ValueError("consistency needs at least one sample")
        self.model, self.samples, self.temperature = model, samples, temperature
        self.targets = (model.ref,)
        self.version = f"consistency:{model.ref}:{samples}:{temperature}"

    @classmethod
    def build(cls, model: LocalModel, settings: ScorerSettings) -> ConsistencyScorer:
        return cls(model, settings.samples, settings.temperature)

    def score_batch(self, items: list[ScoreItem]) -> list[RawScore]:
        conversations = [i.messages for i in items]
        max_new = max(i.max_new_tokens for i in items)
        greedy = self.model.draft_batch(conversations, max_new)
        sampled = self.model.draft_batch(
            conversations, max_new, samples=self.samples, temperature=self.temperature
        )
        scores = []
        for i, answer in enumerate(greedy):
            mine = sampled[i * self.samples : (i + 1) * self.samples]
            agreement = sum(same_answer(answer.text, s.text) for s in mine) / self.samples
            scores.append(RawScore({self.primary: agreement}, answer))
        return scores
