"""Certainty scorers: each estimates the chance that a model's answer to a conversation is correct.

A scorer returns raw scores, one per model it predicts (`RawScore`); `calibrate` turns them into
confidences. Pre-generation scorers (`head`) need only the conversation; post-generation scorers
(`intrinsic`, `nprob`, `consistency`) draft the local model's answer themselves and return it, so that the
local target can answer with exactly the text the confidence is about. A new scorer is one module here that
subclasses `Scorer` with `method="name"`, imported below so that it registers.
"""

from scorers import consistency, head, intrinsic, nprob
from scorers.base import SCORERS, RawScore, ScoreItem, Scorer, ScorerSettings, build_scorer, calibrate

__all__ = [
    "SCORERS",
    "RawScore",
    "ScoreItem",
    "Scorer",
    "ScorerSettings",
    "build_scorer",
    "calibrate",
    "consistency",
    "head",
    "intrinsic",
    "nprob",
]
