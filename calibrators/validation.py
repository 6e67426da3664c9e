"""Input checks shared by calibrators and metrics, so every entry point fails the same clear way."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]


def as_scores(values: ArrayLike, *, name: str = "scores", probability: bool = True) -> FloatArray:
    """A non-empty 1-D float64 array of finite values, in [0, 1] when ``probability`` is set."""
    array = _as_vector(values, name)
    if probability and (array.min() < 0.0 or array.max() > 1.0):
        raise ValueError(
            f"{name} must be probabilities in [0, 1]; got values in [{array.min():g}, {array.max():g}]"
        )
    return array


def as_labels(values: ArrayLike, n: int, *, name: str = "labels") -> FloatArray:
    """A 1-D float64 array of 0/1 labels (bools accepted) with exactly ``n`` items."""
    array = _as_vector(values, name, n)
    if not np.all((array == 0.0) | (array == 1.0)):
        bad = array[(array != 0.0) & (array != 1.0)][0]
        raise ValueError(f"{name} must be 0/1 (or booleans); got {bad:g}")
    return array


def as_unit_interval(values: ArrayLike, n: int, *, name: str) -> FloatArray:
    """A 1-D float64 array of ``n`` values in [0, 1], e.g. per-item correctness or a graded quality."""
    array = _as_vector(values, name, n)
    if array.min() < 0.0 or array.max() > 1.0:
        raise ValueError(f"{name} must lie in [0, 1]; got values in [{array.min():g}, {array.max():g}]")
    return array


def require_both_classes(labels: FloatArray, what: str) -> None:
    positives = int(labels.sum())
    if positives in (0, len(labels)):
        raise ValueError(
            f"{what} needs both classes in the labels; got {len(labels)} items, all {int(labels[0])}"
        )


def _as_vector(values: ArrayLike, name: str, n: int | None = None) -> FloatArray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be numeric: {error}") from None
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional; got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(array)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise ValueError(f"{name} contains {bad} NaN or infinite value(s)")
    if n is not None and len(array) != n:
        raise ValueError(f"{name} has {len(array)} items but the scores have {n}")
    return array
