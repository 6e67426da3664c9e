"""Calibration and discrimination metrics for a confidence that an item is positive (e.g. correct).

All take ``confidences`` in [0, 1] and 0/1 ``labels`` of the same length and raise ``ValueError`` on empty,
NaN, out-of-range or mismatched input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from calibrators.validation import FloatArray, as_labels, as_scores, require_both_classes

DEFAULT_BINS = 15


@dataclass(frozen=True)
class ReliabilityBins:
    """Equal-width bins over [0, 1]; ``confidence`` and ``accuracy`` are NaN where a bin is empty."""

    edges: FloatArray
    counts: NDArray[np.int64]
    confidence: FloatArray
    accuracy: FloatArray

    @property
    def gap(self) -> FloatArray:
        """Accuracy minus mean confidence: negative where the scorer is overconfident."""
        return self.accuracy - self.confidence

    @property
    def weights(self) -> FloatArray:
        return self.counts / self.counts.sum()


@dataclass(frozen=True)
class BrierDecomposition:
    """Murphy's ``brier ~= reliability - resolution + uncertainty`` over equal-width confidence bins."""

    brier: float
    reliability: float
    resolution: float
    uncertainty: float


def reliability_bins(
    confidences: ArrayLike, labels: ArrayLike, n_bins: int = DEFAULT_BINS
) -> ReliabilityBins:
    """Bin ``i`` is ``(edges[i], edges[i+1]]``, right-closed; a confidence of exactly 0 joins the first bin
    and one of exactly 1.0 the last (torchmetrics, by contrast, closes bins on the left and gives 1.0 a bin of
    its own, so the two differ only for confidences that sit exactly on an edge)."""
    c, y = _inputs(confidences, labels)
    return _equal_width_bins(c, y, n_bins)


def ece(confidences: ArrayLike, labels: ArrayLike, n_bins: int = DEFAULT_BINS) -> float:
    """Expected calibration error: count-weighted mean of |accuracy - confidence| over equal-width bins."""
    bins = reliability_bins(confidences, labels, n_bins)
    filled = bins.counts > 0
    return float(np.sum(bins.weights[filled] * np.abs(bins.gap[filled])))


def mce(confidences: ArrayLike, labels: ArrayLike, n_bins: int = DEFAULT_BINS) -> float:
    """Maximum calibration error: the largest |accuracy - confidence| over non-empty equal-width bins."""
    bins = reliability_bins(confidences, labels, n_bins)
    return float(np.max(np.abs(bins.gap[bins.counts > 0])))


def adaptive_ece(confidences: ArrayLike, labels: ArrayLike, n_bins: int = DEFAULT_BINS) -> float:
    """ECE over equal-mass bins: items sorted by confidence (stable, so ties keep input order) and split
    into ``n_bins`` groups whose sizes differ by at most one (fewer groups if there are fewer items)."""
    c, y = _inputs(confidences, labels)
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1; got {n_bins}")
    order = np.argsort(c, kind="stable")
    groups = [g for g in np.array_split(order, n_bins) if len(g)]
    return float(sum(len(g) * abs(y[g].mean() - c[g].mean()) for g in groups) / len(c))


def brier_score(confidences: ArrayLike, labels: ArrayLike) -> float:
    c, y = _inputs(confidences, labels)
    return float(np.mean((c - y) ** 2))


def brier_decomposition(
    confidences: ArrayLike, labels: ArrayLike, n_bins: int = DEFAULT_BINS
) -> BrierDecomposition:
    """Reliability (lower is better), resolution (higher is better) and uncertainty (base-rate variance).

    Computed over the equal-width bins of ``reliability_bins``. ``reliability - resolution + uncertainty``
    equals the Brier score exactly only when all confidences within each bin are equal; otherwise it leaves
    out the within-bin spread of confidences.
    """
    c, y = _inputs(confidences, labels)
    bins = _equal_width_bins(c, y, n_bins)
    base_rate = float(y.mean())
    filled = bins.counts > 0
    weights = bins.weights[filled]
    return BrierDecomposition(
        brier=float(np.mean((c - y) ** 2)),
        reliability=float(np.sum(weights * bins.gap[filled] ** 2)),
        resolution=float(np.sum(weights * (bins.accuracy[filled] - base_rate) ** 2)),
        uncertainty=base_rate * (1.0 - base_rate),
    )


def auroc(confidences: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied scores counted as one half)."""
    c, y = _inputs(confidences, labels)
    require_both_classes(y, "AUROC")
    positives = float(y.sum())
    negatives = len(y) - positives
    rank_sum = float(np.sum(_average_ranks(c)[y == 1.0]))
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def auprc(confidences: ArrayLike, labels: ArrayLike) -> float:
    """Average precision, as scikit-learn defines it: sum over distinct thresholds of
    ``(recall_k - recall_{k-1}) * precision_k`` (a step function, not the trapezoid rule)."""
    c, y = _inputs(confidences, labels)
    if y.sum() == 0:
        raise ValueError("AUPRC needs at least one positive label")
    order = np.argsort(-c, kind="stable")
    ranked, hits = c[order], y[order]
    last_of_tie = np.append(ranked[1:] != ranked[:-1], True)
    true_positives = np.cumsum(hits)[last_of_tie]
    predicted = np.arange(1, len(c) + 1)[last_of_tie]
    recall = true_positives / true_positives[-1]
    precision = true_positives / predicted
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def sharpness(confidences: ArrayLike) -> float:
    """Standard deviation (population, ddof=0) of the confidences: how far they spread from one value."""
    return float(np.std(as_scores(confidences, name="confidences")))


def _inputs(confidences: ArrayLike, labels: ArrayLike) -> tuple[FloatArray, FloatArray]:
    c = as_scores(confidences, name="confidences")
    return c, as_labels(labels, len(c))


def _average_ranks(values: FloatArray) -> FloatArray:
    order = np.argsort(values, kind="stable")
    ranked = values[order]
    starts = np.flatnonzero(np.append(True, ranked[1:] != ranked[:-1]))
    ends = np.append(starts[1:], len(values))
    group = np.repeat(np.arange(len(starts)), ends - starts)
    ranks = np.empty(len(values))
    ranks[order] = ((starts + 1 + ends) / 2)[group]
    return ranks


def _equal_width_bins(c: FloatArray, y: FloatArray, n_bins: int) -> ReliabilityBins:
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1; got {n_bins}")
    # k / n_bins rather than linspace: each edge is then the double nearest the exact fraction, so a
    # confidence of 0.3 sits exactly on the edge 3/10 (linspace gives 0.30000000000000004).
    edges = np.arange(n_bins + 1) / n_bins
    index = np.clip(np.searchsorted(edges, c, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore"):
        confidence = np.bincount(index, weights=c, minlength=n_bins) / counts
        accuracy = np.bincount(index, weights=y, minlength=n_bins) / counts
    return ReliabilityBins(edges, counts, confidence, accuracy)
