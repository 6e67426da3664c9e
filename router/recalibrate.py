"""Close the loop: fit a calibrator (raw score -> confidence) on the feedback logged in the shared store."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import calibrators
from router.feedback import read_feedback
from router.state import RedisStore

ALL_RETAINED = 10**9


@dataclass(frozen=True)
class Fitted:
    calibrator: calibrators.Calibrator
    scorer: str
    samples: int
    correct: int
    ece_before: float
    ece_after: float
    """In-sample: the calibrator is judged on the records it was fitted on, so this flatters it."""


async def _fit(redis_url: str, method: type[calibrators.Calibrator], min_samples: int) -> Fitted:
    store = RedisStore(redis_url)
    try:
        records = await read_feedback(store, ALL_RETAINED)
    finally:
        await store.close()
    if not records:
        raise ValueError("no feedback is logged in this store")
    # Raw scores of different scorers are not comparable: fit on the records of the newest scorer only.
    scorer = records[-1].scorer
    mine = [r for r in records if r.scorer == scorer]
    if len(mine) < min_samples:
        raise ValueError(
            f"{len(mine)} feedback records for scorer {scorer}; at least {min_samples} are needed"
        )
    raw = [r.raw for r in mine]
    correct = [r.correct for r in mine]
    calibrator = method().fit(raw, correct)
    return Fitted(
        calibrator,
        scorer,
        len(mine),
        sum(correct),
        calibrators.ece([r.confidence for r in mine], correct),
        calibrators.ece(calibrator.transform(raw), correct),
    )


def fit_from_feedback(redis_url: str, method: str = "platt", min_samples: int = 50) -> Fitted:
    """`method`: any calibrator kind that fits from feedback (calibrators.fittable_kinds)."""
    methods = calibrators.fittable_kinds()
    if method not in methods:
        raise ValueError(f"unknown method '{method}'; choose from {', '.join(methods)}")
    return asyncio.run(_fit(redis_url, calibrators.CALIBRATORS[method], min_samples))
