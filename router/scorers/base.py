from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from router.local_model import Draft, LocalModel, Message

if TYPE_CHECKING:
    from calibrators import Calibrator
    from policies.schema import ScorerSpec


@dataclass(frozen=True)
class ScoreItem:
    messages: list[Message]
    max_new_tokens: int = 256
    """The draft length, for scorers that draft."""


@dataclass(frozen=True)
class Score:
    confidence: float
    """Calibrated probability that the answer is correct."""
    raw: float
    """The scorer's own output, before calibration."""
    draft: Draft | None = None


class Scorer(ABC):
    name: str
    version: str
    """Changes whenever the scorer's output could: part of the score cache key."""
    pre_generation: bool = False
    calibrator: Calibrator | None = None
    """Maps raw to confidence; None where the raw score is the confidence."""
    reference_scores: list[float] | None = None
    """Raw scores on the scorer's evaluation set (scorer.json), the default reference for drift."""

    @abstractmethod
    def score_batch(self, items: list[ScoreItem]) -> list[Score]:
        """Blocking; the service runs it on the model's worker thread."""


def build_scorer(spec: ScorerSpec, model: LocalModel) -> Scorer:
    from router.scorers.consistency import ConsistencyScorer
    from router.scorers.head import HeadScorer
    from router.scorers.intrinsic import IntrinsicScorer
    from router.scorers.nprob import NProbScorer

    if spec.method == "head":
        return HeadScorer(model, Path(str(spec.adapter)))
    if spec.method == "intrinsic":
        return IntrinsicScorer(model, Path(str(spec.adapter)))
    if spec.method == "consistency":
        return ConsistencyScorer(model, samples=spec.samples, temperature=spec.temperature)
    return NProbScorer(model)
