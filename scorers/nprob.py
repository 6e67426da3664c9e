from __future__ import annotations

from typing import TYPE_CHECKING

from scorers.base import RawScore, ScoreItem, Scorer, ScorerSettings

if TYPE_CHECKING:
    from localmodel import LocalModel


class NProbScorer(Scorer, method="nprob"):
    """Length-normalised probability of the local model's own greedy draft (a cascade baseline)."""

    def __init__(self, model: LocalModel) -> None:
        self.model = model
        self.targets = (model.ref,)
        self.version = f"nprob:{model.ref}"

    @classmethod
    def build(cls, model: LocalModel, settings: ScorerSettings) -> NProbScorer:
        return cls(model)

    def score_batch(self, items: list[ScoreItem]) -> list[RawScore]:
        drafts = self.model.draft_batch([i.messages for i in items], max(i.max_new_tokens for i in items))
        return [RawScore({self.primary: d.nprob}, d) for d in drafts]
