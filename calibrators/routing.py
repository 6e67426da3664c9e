"""Routing metrics from RouteLLM (Ong et al., 2024): how much of the weak-to-strong quality gap a router
recovers for a given share of calls to the strong model.

``scores`` is the confidence that the weak (cheap) model answers an item correctly: a router at strong-call
share ``s`` sends the ``s * n`` least confident items to the strong model. ``weak_correct`` and
``strong_correct`` are each model's per-item correctness (0/1, or a graded quality in [0, 1]).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from calibrators.ordering import expected_prefix_sums
from calibrators.validation import FloatArray, as_scores, as_unit_interval


@dataclass(frozen=True)
class RoutingCurve:
    """Quality and PGR after routing ``k`` items to the strong model, at ``strong_share = k / n``, k = 0..n.

    ``pgr = (quality - weak_quality) / (strong_quality - weak_quality)``, the performance gap recovered.
    """

    strong_share: FloatArray
    quality: FloatArray
    pgr: FloatArray
    weak_quality: float
    strong_quality: float


def routing_curve(scores: ArrayLike, weak_correct: ArrayLike, strong_correct: ArrayLike) -> RoutingCurve:
    """Tied scores are routed as a group in expectation, so the curve does not depend on the input order."""
    s = as_scores(scores)
    weak = as_unit_interval(weak_correct, len(s), name="weak_correct")
    strong = as_unit_interval(strong_correct, len(s), name="strong_correct")
    weak_quality, strong_quality = float(weak.mean()), float(strong.mean())
    if strong_quality <= weak_quality:
        raise ValueError(
            f"PGR needs a strong model better than the weak one; got strong quality {strong_quality:.4f} "
            f"<= weak quality {weak_quality:.4f} on {len(s)} items"
        )
    gains = expected_prefix_sums(s, strong - weak, descending=False)
    quality = np.concatenate([[weak_quality], weak_quality + gains / len(s)])
    # Pin the end to the strong model's own mean so that 100% strong calls match it despite rounding.
    quality[-1] = strong_quality
    pgr = (quality - weak_quality) / (strong_quality - weak_quality)
    return RoutingCurve(np.arange(len(s) + 1) / len(s), quality, pgr, weak_quality, strong_quality)


def apgr(scores: ArrayLike, weak_correct: ArrayLike, strong_correct: ArrayLike) -> float:
    """Average PGR: the area under PGR against strong-call share over [0, 1], by the trapezoid rule on all
    ``n + 1`` points (exact for the routing that randomises the one item at the boundary). Random routing
    scores 0.5; RouteLLM approximates the same integral on a coarser grid of shares."""
    curve = routing_curve(scores, weak_correct, strong_correct)
    return float(np.sum((curve.pgr[1:] + curve.pgr[:-1]) / 2 * np.diff(curve.strong_share)))


def cpt(scores: ArrayLike, weak_correct: ArrayLike, strong_correct: ArrayLike, target: float = 0.5) -> float:
    """Call-performance threshold: the smallest strong-call share whose PGR reaches ``target``
    (CPT(50%) is ``target=0.5``), interpolated linearly between neighbouring shares."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target is a PGR fraction in (0, 1]; got {target}")
    curve = routing_curve(scores, weak_correct, strong_correct)
    # pgr[0] is 0 and pgr[-1] is 1, so the first share reaching the target has a neighbour below it.
    k = int(np.argmax(curve.pgr >= target))
    below, above = curve.pgr[k - 1], curve.pgr[k]
    step = curve.strong_share[k] - curve.strong_share[k - 1]
    return float(curve.strong_share[k - 1] + (target - below) / (above - below) * step)
