"""Distribution drift between a reference sample of scores and a live one: PSI and the two-sample KS test.

Both compare score distributions only (no labels), so they work before any feedback arrives.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from calibrators.validation import as_scores

DEFAULT_PSI_BINS = 10
PSEUDO_COUNT = 0.5
"""Added to every bin's count before taking proportions, so an empty bin in a short window gives a finite,
modest term rather than log(0)."""


def psi(reference: ArrayLike, live: ArrayLike, bins: int = DEFAULT_PSI_BINS) -> float:
    """Population stability index, sum over bins of (live - ref) * ln(live / ref) proportions.

    Bins are equal-mass bins of the reference (its quantiles), so each starts with about the same share;
    repeated quantiles collapse into one edge, which leaves fewer bins for discrete scores. Bin ``i`` is
    ``[edge[i-1], edge[i])``. Proportions carry a pseudo-count of 0.5 per bin. Rules of thumb: below 0.1
    stable, 0.1-0.25 moderate, above 0.25 a significant shift.
    """
    ref = as_scores(reference, name="reference", probability=False)
    cur = as_scores(live, name="live", probability=False)
    if bins < 2:
        raise ValueError(f"bins must be at least 2; got {bins}")
    edges = np.unique(np.quantile(ref, np.arange(1, bins) / bins))
    k = len(edges) + 1
    ref_counts = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=k)
    cur_counts = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=k)
    p = (ref_counts + PSEUDO_COUNT) / (len(ref) + PSEUDO_COUNT * k)
    q = (cur_counts + PSEUDO_COUNT) / (len(cur) + PSEUDO_COUNT * k)
    return float(np.sum((q - p) * np.log(q / p)))


def ks_statistic(reference: ArrayLike, live: ArrayLike) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs."""
    ref = np.sort(as_scores(reference, name="reference", probability=False))
    cur = np.sort(as_scores(live, name="live", probability=False))
    points = np.concatenate([ref, cur])
    gap = np.searchsorted(ref, points, side="right") / len(ref) - np.searchsorted(
        cur, points, side="right"
    ) / len(cur)
    return float(np.max(np.abs(gap)))


def ks_critical_value(n_reference: int, n_live: int, alpha: float) -> float:
    """The KS statistic above which two samples of these sizes differ at level ``alpha`` (asymptotic)."""
    if n_reference < 1 or n_live < 1:
        raise ValueError(f"sample sizes must be positive; got {n_reference} and {n_live}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1); got {alpha}")
    c = np.sqrt(-0.5 * np.log(alpha / 2))
    return float(c * np.sqrt((n_reference + n_live) / (n_reference * n_live)))
