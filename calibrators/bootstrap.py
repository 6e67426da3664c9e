"""Seeded percentile-bootstrap intervals for any metric, reported with the counts behind them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from calibrators.validation import FloatArray, as_scores, as_unit_interval

Metric = Callable[..., float]


@dataclass(frozen=True)
class Estimate:
    """A metric on the full sample, its bootstrap interval, and the sample it came from.

    ``n`` is the number of items and ``positives`` how many of them have label 1 (e.g. correct answers).
    ``resamples`` counts the resamples the metric was defined on (one holding a single class is skipped).
    """

    value: float
    low: float
    high: float
    level: float
    n: int
    positives: int
    resamples: int

    def __str__(self) -> str:
        return f"{self.value:.4f} [{self.low:.4f}, {self.high:.4f}] (n={self.n}, positives={self.positives})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def bootstrap(
    metric: Metric,
    scores: ArrayLike,
    labels: ArrayLike,
    *extra: ArrayLike,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """``metric(scores, labels, *extra)`` with a percentile interval from ``n_resamples`` item resamples.

    Bind other arguments first, e.g. ``functools.partial(ece, n_bins=10)`` or ``partial(cpt, target=0.8)``.

    Items are resampled as whole rows (a score with its label and its ``extra`` values, e.g. the weak and
    strong model's correctness for routing metrics). The same ``seed`` gives the same interval. Resamples
    on which the metric raises ``ValueError`` (a single class, say) are skipped; if more than half are,
    the interval would mislead and this raises instead.
    """
    _check(n_resamples, level)
    s = as_scores(scores, probability=False)
    columns: list[FloatArray] = [s, as_unit_interval(labels, len(s), name="labels")]
    for i, array in enumerate(extra):
        columns.append(np.asarray(array, dtype=np.float64))
        if columns[-1].shape != s.shape:
            raise ValueError(f"extra array {i} has shape {columns[-1].shape}, the scores {s.shape}")
    value = metric(*columns)
    rng = np.random.default_rng(seed)
    samples: list[float] = []
    for _ in range(n_resamples):
        rows = rng.integers(0, len(s), size=len(s))
        try:
            samples.append(metric(*(column[rows] for column in columns)))
        except ValueError:
            continue
    if 2 * len(samples) < n_resamples:
        raise ValueError(
            f"the metric was undefined on {n_resamples - len(samples)} of {n_resamples} resamples "
            f"of {len(s)} items; too few items for a bootstrap interval"
        )
    low, high = _interval(samples, level)
    return Estimate(
        value=float(value),
        low=low,
        high=high,
        level=level,
        n=len(s),
        positives=int(np.count_nonzero(columns[1] == 1.0)),
        resamples=len(samples),
    )


def calibrated_band(
    metric: Metric,
    confidences: ArrayLike,
    *,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """The range a metric takes on a perfectly calibrated scorer with these confidences, from noise alone.

    Consistency resampling (Broecker & Smith, 2007): resample the confidences, draw each label as
    Bernoulli(confidence), apply ``metric(confidences, labels)``. ECE is biased upwards on finite samples
    (about 0.01 at 20 000 items and 15 bins), so a measured ECE inside this band is no evidence of
    miscalibration; the bootstrap interval of the ECE alone cannot say that.
    """
    _check(n_resamples, level)
    c = as_scores(confidences, name="confidences")
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n_resamples):
        resampled = c[rng.integers(0, len(c), size=len(c))]
        samples.append(metric(resampled, (rng.random(len(c)) < resampled).astype(np.float64)))
    return _interval(samples, level)


def _check(n_resamples: int, level: float) -> None:
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1; got {n_resamples}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1); got {level}")


def _interval(samples: list[float], level: float) -> tuple[float, float]:
    low, high = np.quantile(samples, [(1.0 - level) / 2, (1.0 + level) / 2])
    return float(low), float(high)
