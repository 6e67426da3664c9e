"""Certainty scorers: each estimates the chance that a model's answer to a conversation is correct.

A scorer returns raw scores, one per model it predicts (`RawScore`); `calibrate` turns them into
confidences. Pre-generation scorers (`head`) need only the conversation; post-generation scorers
(`intrinsic`, `nprob`, `consistency`) draft the local model's answer themselves and return it, so that the
local target can answer with exactly the text the confidence is about. A new scorer is one module in this
folder that subclasses `Scorer` with `method="name"`: every module here is imported below, so it registers.
"""

import importlib
import pkgutil

from scorers.base import SCORERS, RawScore, ScoreItem, Scorer, ScorerSettings, build_scorer, calibrate

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["SCORERS", "RawScore", "ScoreItem", "Scorer", "ScorerSettings", "build_scorer", "calibrate"]
