"""Selective prediction: how much risk is left when only the most confident answers are kept."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from calibrators.ordering import expected_prefix_sums
from calibrators.validation import FloatArray, as_labels, as_scores

# EliCal's threshold grid: 0.01, 0.02, ..., 0.99.
ALIGNMENT_GRID = np.arange(1, 100) / 100


@dataclass(frozen=True)
class RiskCoverage:
    """``risk[k-1]`` is the error rate among the ``k`` most confident items, at ``coverage[k-1] = k / n``."""

    coverage: FloatArray
    risk: FloatArray

    @property
    def aurc(self) -> float:
        return float(np.mean(self.risk))


def risk_coverage_curve(confidences: ArrayLike, labels: ArrayLike) -> RiskCoverage:
    """Keep the ``k`` most confident items for every ``k``; tied confidences share their errors evenly."""
    c = as_scores(confidences, name="confidences")
    y = as_labels(labels, len(c))
    kept = np.arange(1, len(c) + 1)
    errors = expected_prefix_sums(c, 1.0 - y, descending=True)
    return RiskCoverage(coverage=kept / len(c), risk=errors / kept)


def aurc(confidences: ArrayLike, labels: ArrayLike) -> float:
    """Area under the risk-coverage curve: the mean of the risk over coverages 1/n, 2/n, ..., 1."""
    return risk_coverage_curve(confidences, labels).aurc


def prr(confidences: ArrayLike, labels: ArrayLike) -> float:
    """Prediction rejection ratio ``(AURC_random - AURC) / (AURC_random - AURC_oracle)``.

    1 for an oracle that ranks every correct item above every wrong one, 0 for a random ranking (whose
    expected AURC is the overall error rate) or a constant score, negative when worse than random.
    """
    c = as_scores(confidences, name="confidences")
    y = as_labels(labels, len(c))
    error_rate = 1.0 - float(y.mean())
    if error_rate in (0.0, 1.0):
        raise ValueError("PRR needs both correct and incorrect items; every label is the same")
    oracle = aurc(y, y)
    return (error_rate - aurc(c, y)) / (error_rate - oracle)


def alignment_threshold(
    confidences: ArrayLike, labels: ArrayLike, *, calibration_fraction: float = 0.2
) -> float:
    """EliCal's threshold: the grid value (0.01..0.99) that best predicts the labels on the first
    ``calibration_fraction`` of the items (in the order given), as ``confidence >= threshold``.

    Thresholds that predict a single class on that part are skipped; the smallest of equally good ones wins.
    """
    c, y, n_calibration = _alignment_split(confidences, labels, calibration_fraction)
    predicted = c[None, :n_calibration] >= ALIGNMENT_GRID[:, None]
    splits = predicted.any(axis=1) & ~predicted.all(axis=1)
    if not splits.any():
        raise ValueError(
            f"no threshold in 0.01..0.99 separates the {n_calibration} calibration items into two classes"
        )
    accuracy = np.where(splits, (predicted == (y[None, :n_calibration] == 1.0)).mean(axis=1), -1.0)
    return float(ALIGNMENT_GRID[np.argmax(accuracy)])


def youden_threshold(confidences: ArrayLike, labels: ArrayLike) -> tuple[float, float]:
    """(threshold, J): the cut for which ``confidence >= threshold`` best separates positives from
    negatives by Youden's J (true-positive rate minus false-positive rate); the lowest of equal cuts."""
    c = as_scores(confidences, probability=False)
    y = as_labels(labels, len(c))
    if not 0 < y.sum() < len(y):
        raise ValueError(f"choosing a threshold needs positive and negative rows; {int(y.sum())} of {len(y)}")
    cuts = np.unique(c)
    above = c[None, :] >= cuts[:, None]
    j = above[:, y == 1].mean(axis=1) - above[:, y == 0].mean(axis=1)
    best = int(np.argmax(j))
    return float(cuts[best]), float(j[best])


def alignment(confidences: ArrayLike, labels: ArrayLike, *, calibration_fraction: float = 0.2) -> float:
    """EliCal's Alignment: accuracy of ``confidence >= alignment_threshold(...)`` as a prediction of the
    labels on the items after the first ``calibration_fraction`` (the caller shuffles, if it wants to)."""
    c, y, n_calibration = _alignment_split(confidences, labels, calibration_fraction)
    threshold = alignment_threshold(c, y, calibration_fraction=calibration_fraction)
    return float(np.mean((c[n_calibration:] >= threshold) == (y[n_calibration:] == 1.0)))


def _alignment_split(
    confidences: ArrayLike, labels: ArrayLike, calibration_fraction: float
) -> tuple[FloatArray, FloatArray, int]:
    c = as_scores(confidences, name="confidences")
    y = as_labels(labels, len(c))
    if not 0.0 < calibration_fraction < 1.0:
        raise ValueError(f"calibration_fraction must be in (0, 1); got {calibration_fraction}")
    n_calibration = int(len(c) * calibration_fraction)
    if n_calibration < 1 or n_calibration == len(c):
        raise ValueError(f"{len(c)} items are too few to split {calibration_fraction:.0%} / rest")
    return c, y, n_calibration
