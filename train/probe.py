"""A frozen linear probe: logistic regression on the base model's prompt states, no adapter.

Used three times: to choose the layer a head reads, to start stage 2 of the head's training, and as the
baseline a trained head has to beat on data it never saw (the issue's reference point for transfer).
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler


class LinearProbe:
    def __init__(self, c: float = 1e-3) -> None:
        """`c`: scikit-learn's inverse L2 strength on standardised features. Strong (1e-3, not the default
        1.0) because positives are rare and states wide: on the shared QA sets it gave the best dev AUROC of
        1e-4..1e-2, and weaker settings fit the training sources' base rates, not what the model knows."""
        self.c = c
        self.weights = np.zeros(0)
        self.bias = 0.0

    def fit(self, x: np.ndarray, y: np.ndarray) -> LinearProbe:
        scaler = StandardScaler().fit(x)
        model = LogisticRegression(C=self.c, max_iter=2000).fit(scaler.transform(x), y)
        # Fold the standardisation in, so the weights apply to raw states (and can start a trained head).
        scale = np.asarray(scaler.scale_)
        self.weights = model.coef_[0] / scale
        self.bias = float(model.intercept_[0] - np.sum(model.coef_[0] * scaler.mean_ / scale))
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        result: np.ndarray = 1 / (1 + np.exp(-(x @ self.weights + self.bias)))
        return result
