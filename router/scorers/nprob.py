from __future__ import annotations

from router.local_model import LocalModel
from router.scorers.base import Score, ScoreItem, Scorer


class NProbScorer(Scorer):
    """Length-normalised probability of the local model's own greedy draft (a cascade baseline)."""

    name = "nprob"

    def __init__(self, model: LocalModel) -> None:
        self.model = model
        self.version = f"nprob:{model.ref}"

    def score_batch(self, items: list[ScoreItem]) -> list[Score]:
        drafts = self.model.draft_batch([i.messages for i in items], max(i.max_new_tokens for i in items))
        return [Score(d.nprob, d.nprob, d) for d in drafts]
