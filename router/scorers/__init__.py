"""Certainty scorers: each estimates the chance that the local model's answer to a conversation is correct.

One abstract method scores a batch. Pre-generation scorers (`head`) need only the conversation;
post-generation scorers (`intrinsic`, `nprob`, `consistency`) draft the answer themselves and return it,
so that the local target can answer with exactly the text the confidence is about.
"""

from router.scorers.base import Score, ScoreItem, Scorer, build_scorer

__all__ = ["Score", "ScoreItem", "Scorer", "build_scorer"]
