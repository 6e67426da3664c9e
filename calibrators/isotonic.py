"""Isotonic regression: the best non-decreasing fit of the labels, interpolated between its breakpoints."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from calibrators.base import Calibrator, float_list
from calibrators.validation import FloatArray


class IsotonicCalibrator(Calibrator, kind="isotonic"):
    """Pool-adjacent-violators fit, then linear interpolation between breakpoints, clipped outside them.

    This is the same function as scikit-learn's ``IsotonicRegression(y_min=0, y_max=1,
    out_of_bounds="clip")``: tied scores are averaged, and only the two ends of each constant run are kept.
    """

    thresholds: FloatArray
    values: FloatArray

    def _fit(self, x: FloatArray, y: FloatArray) -> None:
        unique, inverse = np.unique(x, return_inverse=True)
        counts = np.bincount(inverse).astype(np.float64)
        means = np.bincount(inverse, weights=y) / counts
        fitted = pool_adjacent_violators(means, counts)
        keep = np.ones(len(fitted), dtype=bool)
        keep[1:-1] = (fitted[1:-1] != fitted[:-2]) | (fitted[1:-1] != fitted[2:])
        self.thresholds, self.values = unique[keep], fitted[keep]

    def _transform(self, x: FloatArray) -> FloatArray:
        return monotone_interp(x, self.thresholds, self.values)

    def _get_params(self) -> dict[str, Any]:
        return {"thresholds": self.thresholds.tolist(), "values": self.values.tolist()}

    def _set_params(self, params: Mapping[str, Any]) -> None:
        thresholds = float_list(params["thresholds"], "thresholds")
        values = float_list(params["values"], "values")
        if len(thresholds) != len(values):
            raise ValueError("thresholds and values must have the same length")
        if np.any(np.diff(thresholds) <= 0.0) or np.any(np.diff(values) < 0.0):
            raise ValueError("thresholds must increase and values must not decrease")
        if values[0] < 0.0 or values[-1] > 1.0:
            raise ValueError("values must lie in [0, 1]")
        self.thresholds, self.values = thresholds, values


def pool_adjacent_violators(values: FloatArray, weights: FloatArray) -> FloatArray:
    """The weighted least-squares non-decreasing fit to ``values`` (in their given order)."""
    block_means: list[float] = []
    block_weights: list[float] = []
    block_sizes: list[int] = []
    for value, weight in zip(values.tolist(), weights.tolist(), strict=True):
        mean, total, size = value, weight, 1
        while block_means and block_means[-1] >= mean:
            previous_total = block_weights.pop()
            mean = (block_means.pop() * previous_total + mean * total) / (previous_total + total)
            total += previous_total
            size += block_sizes.pop()
        block_means.append(mean)
        block_weights.append(total)
        block_sizes.append(size)
    return np.repeat(np.asarray(block_means), block_sizes)


def monotone_interp(x: FloatArray, xp: FloatArray, fp: FloatArray) -> FloatArray:
    """``np.interp`` for non-decreasing ``fp``, non-decreasing in ``x`` by construction.

    ``np.interp`` makes no promise about rounding just left of a breakpoint; here every step is monotone
    in floating point and each segment is capped at its right end value, so no input can go backwards.
    """
    if len(xp) == 1:
        return np.full(len(x), fp[0])
    segment = np.clip(np.searchsorted(xp, x, side="right") - 1, 0, len(xp) - 2)
    left, right = xp[segment], xp[segment + 1]
    t = np.clip((x - left) / (right - left), 0.0, 1.0)
    return np.minimum(fp[segment] + t * (fp[segment + 1] - fp[segment]), fp[segment + 1])
