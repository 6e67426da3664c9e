"""Parametric calibrators on the logit scale: temperature scaling and Platt scaling."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from calibrators.base import Calibrator, finite_float, sigmoid
from calibrators.validation import FloatArray

# The temperature is searched in this range, wide enough for raw logits in the thousands; the bounds keep
# the fit finite where the likelihood has no optimum: separable data (T -> 0) and scores unrelated or
# inversely related to the labels (T -> infinity).
MIN_TEMPERATURE = 1e-6
MAX_TEMPERATURE = 1e6


class TemperatureScaling(Calibrator, kind="temperature"):
    """``p = sigmoid(z / T)`` with one temperature ``T`` fitted by maximum likelihood.

    ``z`` is the raw logit (``input_kind="logit"``) or, for probability scores, ``logit(p)`` with ``p``
    clipped to [1e-7, 1 - 1e-7]. With no bias term the map keeps 0.5 fixed and only sharpens or softens.
    ``T`` is confined to [1e-6, 1e6]; scores unrelated or inversely related to the labels end at 1e6
    (output ~0.5 everywhere), a sign to use Platt scaling or check the scorer.
    """

    temperature: float

    def _fit(self, x: FloatArray, y: FloatArray) -> None:
        z = self._logits(x)

        def gradient(temperature: float) -> float:
            # d(NLL)/d(1/T): the NLL is convex in 1/T, so this falls as T grows and has one root.
            return float(np.sum((sigmoid(z / temperature) - y) * z))

        if gradient(MAX_TEMPERATURE) >= 0.0:
            self.temperature = MAX_TEMPERATURE
        elif gradient(MIN_TEMPERATURE) <= 0.0:
            self.temperature = MIN_TEMPERATURE
        else:
            # Bisection in log T: 64 halvings of a width-28 interval reach machine precision.
            lo, hi = np.log(MIN_TEMPERATURE), np.log(MAX_TEMPERATURE)
            for _ in range(64):
                mid = 0.5 * (lo + hi)
                if gradient(float(np.exp(mid))) > 0.0:
                    lo = mid
                else:
                    hi = mid
            self.temperature = float(np.exp(0.5 * (lo + hi)))

    def _transform(self, x: FloatArray) -> FloatArray:
        return sigmoid(self._logits(x) / self.temperature)

    def _get_params(self) -> dict[str, Any]:
        return {"temperature": self.temperature}

    def _set_params(self, params: Mapping[str, Any]) -> None:
        temperature = finite_float(params["temperature"], "temperature")
        if temperature <= 0.0:
            raise ValueError(f"temperature must be positive; got {temperature}")
        self.temperature = temperature


class PlattScaling(Calibrator, kind="platt"):
    """``p = sigmoid(a * z + b)`` fitted by logistic regression, with ``a >= 0`` so the map never decreases.

    ``z`` is defined as for ``TemperatureScaling``. Targets are Platt's smoothed labels
    ``(N+ + 1) / (N+ + 2)`` and ``1 / (N- + 2)``, which keep the fit finite on separable data. The loss is
    convex, so if the best unconstrained slope is negative the constrained optimum has ``a = 0`` and ``b``
    the logit of the mean target: a constant base-rate forecast.
    """

    slope: float
    intercept: float

    def _fit(self, x: FloatArray, y: FloatArray) -> None:
        z = self._logits(x)
        positives = float(y.sum())
        negatives = len(y) - positives
        t = np.where(y == 1.0, (positives + 1.0) / (positives + 2.0), 1.0 / (negatives + 2.0))
        base = float(np.log(t.mean()) - np.log1p(-t.mean()))
        a, b = _logistic_regression(z, t, start=(0.0, base))
        self.slope, self.intercept = (a, b) if a >= 0.0 else (0.0, base)

    def _transform(self, x: FloatArray) -> FloatArray:
        return sigmoid(self.slope * self._logits(x) + self.intercept)

    def _get_params(self) -> dict[str, Any]:
        return {"slope": self.slope, "intercept": self.intercept}

    def _set_params(self, params: Mapping[str, Any]) -> None:
        slope = finite_float(params["slope"], "slope")
        if slope < 0.0:
            raise ValueError(f"slope must be non-negative; got {slope}")
        self.slope = slope
        self.intercept = finite_float(params["intercept"], "intercept")


def _logistic_regression(z: FloatArray, t: FloatArray, start: tuple[float, float]) -> tuple[float, float]:
    """Newton's method with step halving on the cross-entropy of ``sigmoid(a z + b)`` against ``t``."""

    def loss(a: float, b: float) -> float:
        s = a * z + b
        return float(np.sum(np.logaddexp(0.0, s) - t * s))

    a, b = start
    current = loss(a, b)
    for _ in range(100):
        p = sigmoid(a * z + b)
        r = p - t
        w = p * (1.0 - p)
        gradient = np.array([np.sum(r * z), np.sum(r)])
        hessian = np.array([[np.sum(w * z * z), np.sum(w * z)], [np.sum(w * z), np.sum(w)]])
        # lstsq rather than solve: with a single distinct score the Hessian is singular.
        step = np.linalg.lstsq(hessian, gradient, rcond=None)[0]
        scale = 1.0
        while scale > 1e-10:
            candidate = loss(a - scale * step[0], b - scale * step[1])
            if candidate <= current:
                break
            scale *= 0.5
        else:
            break
        a, b, current = float(a - scale * step[0]), float(b - scale * step[1]), candidate
        # Newton converges quadratically, so a step this small means the next one is below rounding.
        if scale * float(np.max(np.abs(step))) < 1e-10 * (1.0 + abs(a) + abs(b)):
            break
    return a, b
