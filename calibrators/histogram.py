"""Histogram binning: each equal-mass bin of scores maps to the observed positive rate in that bin."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from calibrators.base import Calibrator, ScoreKind, float_list
from calibrators.isotonic import pool_adjacent_violators
from calibrators.validation import FloatArray


class HistogramBinning(Calibrator, kind="histogram"):
    """Equal-mass bins (Zadrozny & Elkan) whose rates are made non-decreasing by pooling adjacent violators.

    Bin ``i`` is ``(edges[i-1], edges[i]]`` (the first open to the left, the last to the right). Edges are
    scores seen in the fit, so every bin holds at least one fitted item; ties can merge bins, so there may
    be fewer than ``n_bins``. Plain histogram binning can decrease from one bin to the next; pooling the
    offending bins (weighted by their counts) keeps the promised monotone output.
    """

    edges: FloatArray
    values: FloatArray

    def __init__(self, n_bins: int = 15, *, input_kind: ScoreKind = "probability") -> None:
        super().__init__(input_kind=input_kind)
        if n_bins < 1:
            raise ValueError(f"n_bins must be at least 1; got {n_bins}")
        self.n_bins = n_bins

    def _fit(self, x: FloatArray, y: FloatArray) -> None:
        levels = np.arange(1, self.n_bins) / self.n_bins
        edges = np.unique(np.quantile(x, levels, method="inverted_cdf"))
        self.edges = edges[edges < x.max()]
        bins = np.searchsorted(self.edges, x, side="left")
        counts = np.bincount(bins, minlength=len(self.edges) + 1).astype(np.float64)
        rates = np.bincount(bins, weights=y, minlength=len(self.edges) + 1) / counts
        self.values = pool_adjacent_violators(rates, counts)

    def _transform(self, x: FloatArray) -> FloatArray:
        return self.values[np.searchsorted(self.edges, x, side="left")]

    def _get_params(self) -> dict[str, Any]:
        return {"n_bins": self.n_bins, "edges": self.edges.tolist(), "values": self.values.tolist()}

    def _set_params(self, params: Mapping[str, Any]) -> None:
        edges = np.asarray([float(e) for e in params["edges"]], dtype=np.float64)
        values = float_list(params["values"], "values")
        if len(values) != len(edges) + 1:
            raise ValueError("there must be exactly one more value than edges")
        if np.any(~np.isfinite(edges)) or np.any(np.diff(edges) <= 0.0) or np.any(np.diff(values) < 0.0):
            raise ValueError("edges must be finite and increasing, values must not decrease")
        if values[0] < 0.0 or values[-1] > 1.0:
            raise ValueError("values must lie in [0, 1]")
        self.n_bins = int(params["n_bins"])
        self.edges, self.values = edges, values
