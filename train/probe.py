"""A frozen linear probe: logistic regression on the base model's prompt states, no adapter.

Used four times: to choose the layer a head reads, to start stage 2 of the head's training, as the baseline a
trained head has to beat on data it never saw (the issue's reference point for transfer), and cross-fitted,
to judge the head's recipe on every labelled row rather than on a 10% test split.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from localmodel.model import LocalModel, Pooling
from train.data import QARecord, prompt
from train.loop import in_length_order

Row = dict[str, Any]


class LinearProbe:
    def __init__(self, c: float = 3e-4) -> None:
        """`c`: scikit-learn's inverse L2 strength on standardised features. Strong (not the default 1.0)
        because positives are rare and states wide: weaker settings fit the training sources' base rates, not
        what the model knows. The classes are weighted equally in the fit, so the few correct answers shape
        the direction as much as the many wrong ones; the intercept is then moved back to the real base
        rate, so outputs stay probabilities. Of C 1e-4..2e-3, weighted and not, this gave the best AUROC on
        free-form sources left out of the fit (docs/scorer-quality.md)."""
        self.c = c
        self.weights = np.zeros(0)
        self.bias = 0.0

    def fit(self, x: np.ndarray, y: np.ndarray) -> LinearProbe:
        scaler = StandardScaler().fit(x)
        model = LogisticRegression(C=self.c, class_weight="balanced", max_iter=2000)
        model.fit(scaler.transform(x), y)
        # Equal class weights make the fit believe in even odds; the prior shift (King and Zeng, 2001)
        # restores the training rows' own.
        base_rate = float(np.clip(np.mean(y), 1e-6, 1 - 1e-6))
        prior_shift = np.log(base_rate / (1 - base_rate))
        # Fold the standardisation in, so the weights apply to raw states (and can start a trained head).
        scale = np.asarray(scaler.scale_)
        self.weights = model.coef_[0] / scale
        self.bias = float(model.intercept_[0] + prior_shift - np.sum(model.coef_[0] * scaler.mean_ / scale))
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        result: np.ndarray = 1 / (1 + np.exp(-(x @ self.weights + self.bias)))
        return result


class FrozenStates:
    """The base model's prompt states at one layer, extracted once per row id for every pooling.

    Extraction is what a probe costs (minutes per thousand rows on a CPU), and an evaluation asks for the
    same rows more than once: the probe's fitting rows, the judged rows, every row when cross-fitting.
    """

    def __init__(self, model: LocalModel, layer: int) -> None:
        self.model, self.layer = model, layer
        self._cache: dict[str, np.ndarray] = {}

    def __call__(self, rows: list[Row], pooling: Pooling) -> np.ndarray:
        missing = list({r["id"]: r for r in rows if r["id"] not in self._cache}.values())
        if missing:
            self._cache.update(
                zip([r["id"] for r in missing], in_length_order(missing, self._batch), strict=True)
            )
        states = np.stack([self._cache[r["id"]] for r in rows])
        # One forward pass serves every pooling: "last+mean" starts with "last".
        return states if pooling == "last+mean" else states[:, : states.shape[1] // 2]

    def _batch(self, rows: list[Row]) -> np.ndarray:
        texts = [self.model.prompt_text(prompt(QARecord.of_label(r))) for r in rows]
        states = self.model.prompt_states(texts, self.layer, "last+mean", None)
        return states.cpu().numpy().astype(np.float64)


def fold_of(row_id: str, folds: int) -> int:
    """A rule of the id alone, independent of the train/dev/test split's seed."""
    return int(hashlib.sha256(f"fold:{row_id}".encode()).hexdigest()[:8], 16) % folds


def cross_fitted(states: np.ndarray, rows: list[Row], folds: int) -> np.ndarray:
    """Each row's probe score from a probe fitted on the other folds: a held-out score for every row."""
    labels = np.array([r["correct"] for r in rows], dtype=float)
    assigned = np.array([fold_of(r["id"], folds) for r in rows])
    scores = np.full(len(rows), np.nan)
    for fold in range(folds):
        judged = assigned == fold
        if judged.any():
            probe = LinearProbe().fit(states[~judged], labels[~judged])
            scores[judged] = probe.transform(states[judged])
    return scores
