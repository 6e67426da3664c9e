"""Cost-quality curves of routing between several targets (models with a price per request).

A point is a routing policy: ``cost`` its mean price per request and ``quality`` its mean correctness
over the same items. Joining two neighbouring points linearly is exact for the policy that randomises
between them, so a curve's area and the cost at which it reaches a quality are read off the polyline.
Targets are always given cheapest first (columns of ``correct`` and ``confidences``, entries of ``costs``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from calibrators.ordering import expected_prefix_sums
from calibrators.validation import FloatArray

# Above every confidence, so the last threshold of a sweep passes no target and every item falls back.
ABOVE_ONE = 1.0 + 1e-9


@dataclass(frozen=True)
class CostQualityCurve:
    """Mean price per request and mean correctness of each routing policy along a sweep."""

    cost: FloatArray
    quality: FloatArray


def escalation_curve(
    scores: ArrayLike, cheap_correct: ArrayLike, dear_correct: ArrayLike, cheap_cost: float, dear_cost: float
) -> CostQualityCurve:
    """Send the ``k`` lowest-scored items to the dear target, ``k = 0..n``; ties are routed as a group in
    expectation (as :func:`calibrators.routing_curve`), and unlike it this is defined whichever is better."""
    s = np.asarray(scores, dtype=np.float64)
    cheap = np.asarray(cheap_correct, dtype=np.float64)
    dear = np.asarray(dear_correct, dtype=np.float64)
    gains = expected_prefix_sums(s, dear - cheap, descending=False)
    quality = np.concatenate([[cheap.mean()], cheap.mean() + gains / len(s)])
    quality[-1] = dear.mean()
    share = np.arange(len(s) + 1) / len(s)
    return CostQualityCurve(cheap_cost + share * (dear_cost - cheap_cost), quality)


def threshold_choice(confidences: FloatArray, threshold: float) -> NDArray[np.intp]:
    """Per item, the cheapest target whose confidence is at least ``threshold``, else the most likely one
    (the cheapest of the most likely on ties); ``confidences`` has one column per target."""
    passes = confidences >= threshold
    return np.where(passes.any(axis=1), np.argmax(passes, axis=1), np.argmax(confidences, axis=1))


def threshold_curve(confidences: FloatArray, correct: FloatArray, costs: ArrayLike) -> CostQualityCurve:
    """:func:`threshold_choice` swept over 0, every distinct confidence and just above 1, in that order.

    Computed from change points rather than one pass per threshold (n * K thresholds would be quadratic):
    as the threshold rises an item's choice only moves to a later "record" target, one whose confidence
    beats every cheaper target's, and it leaves a record exactly when the threshold passes its confidence.
    """
    c = np.asarray(costs, dtype=np.float64)
    n = len(confidences)
    current = np.zeros(n, dtype=np.intp)
    best = confidences[:, 0].copy()
    empty = np.empty(0)
    at, dq, dc = [empty], [empty], [empty]
    for j in range(1, confidences.shape[1]):
        rows = np.flatnonzero(confidences[:, j] > best)
        at.append(best[rows])
        dq.append(correct[rows, j] - correct[rows, current[rows]])
        dc.append(c[j] - c[current[rows]])
        current[rows], best[rows] = j, confidences[rows, j]
    values, order = np.concatenate(at), np.argsort(np.concatenate(at), kind="stable")
    thresholds = np.unique(np.concatenate([[0.0], confidences.ravel(), [ABOVE_ONE]]))
    # Changes that have happened at threshold t are those whose confidence is strictly below t.
    passed = np.searchsorted(values[order], thresholds, side="left")
    quality = np.concatenate([[0.0], np.cumsum(np.concatenate(dq)[order])])[passed] / n
    cost = np.concatenate([[0.0], np.cumsum(np.concatenate(dc)[order])])[passed] / n
    return CostQualityCurve(c[0] + cost, correct[:, 0].mean() + quality)


def oracle_curve(correct: FloatArray, costs: ArrayLike) -> CostQualityCurve:
    """The best any router can do with 0/1 correctness: from every item on the cheapest target, move the
    items it gets wrong to their cheapest correct target, smallest extra price first (each move gains one
    answer, so the cheapest moves buy the most answers per dollar). Ends at "cheapest correct, else
    cheapest"; beyond that cost no policy is more accurate."""
    c = np.asarray(costs, dtype=np.float64)
    best = correct.max(axis=1)
    rows = np.flatnonzero(best > correct[:, 0])
    target = np.argmax(correct[rows] >= best[rows, None], axis=1)
    extra = c[target] - c[0]
    gain = best[rows] - correct[rows, 0]
    order = np.lexsort((-gain, extra))
    n = len(correct)
    cost = c[0] + np.concatenate([[0.0], np.cumsum(extra[order])]) / n
    quality = correct[:, 0].mean() + np.concatenate([[0.0], np.cumsum(gain[order])]) / n
    return CostQualityCurve(cost, quality)


def cost_at_quality(curve: CostQualityCurve, quality: float) -> float | None:
    """The lowest cost at which the polyline reaches ``quality``, or None if it never does."""
    q, x = curve.quality, curve.cost
    found = list(x[q >= quality])
    # Segments that cross upwards: interpolate where they meet the level.
    crossing = np.flatnonzero((q[:-1] < quality) & (q[1:] >= quality))
    for i in crossing:
        found.append(x[i] + (quality - q[i]) / (q[i + 1] - q[i]) * (x[i + 1] - x[i]))
    return float(min(found)) if found else None


def subsample(length: int, max_points: int = 101) -> NDArray[np.intp]:
    """At most ``max_points`` evenly spaced indices into a sequence, both ends kept."""
    return np.unique(np.round(np.linspace(0, length - 1, min(length, max_points))).astype(np.intp))
