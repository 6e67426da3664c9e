"""A frozen linear probe: logistic regression on the base model's last-token state, no adapter.

Used twice: to choose the layer a head reads, and as the baseline a trained head has to beat on data it
never saw (the issue's reference point for transfer to a held-out data set).
"""

from __future__ import annotations

import numpy as np


class LinearProbe:
    def __init__(self, l2: float = 1.0, steps: int = 300) -> None:
        self.l2, self.steps = l2, steps
        self.weights = np.zeros(0)
        self.bias = 0.0

    def fit(self, x: np.ndarray, y: np.ndarray) -> LinearProbe:
        """L2-regularised logistic regression by gradient descent on standardised features."""
        mean, std = x.mean(0), x.std(0) + 1e-6
        z = (x - mean) / std
        w, b = np.zeros(z.shape[1]), 0.0
        for _ in range(self.steps):
            p = 1 / (1 + np.exp(-(z @ w + b)))
            w -= 0.5 * (z.T @ (p - y) + self.l2 * w) / len(y)
            b -= 0.5 * float(np.mean(p - y))
        # Fold the standardisation back in, so the weights apply to raw features.
        self.weights, self.bias = w / std, b - float(np.sum(w * mean / std))
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        result: np.ndarray = 1 / (1 + np.exp(-(x @ self.weights + self.bias)))
        return result
