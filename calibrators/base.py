"""The calibrator interface, its JSON file format and the registry that lets ``load`` restore any kind."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import numpy as np
from numpy.typing import ArrayLike

from calibrators.validation import FloatArray, as_labels, as_scores, require_both_classes

FORMAT = "confidence-router/calibrator"
VERSION = 1
# Probabilities are clipped this far from 0 and 1 before taking logits, so |logit| <= 16.1 stays finite.
LOGIT_EPS = 1e-7

ScoreKind = Literal["probability", "logit"]
CALIBRATORS: dict[str, type[Calibrator]] = {}


class Calibrator(ABC):
    """Maps a raw score to a calibrated probability of the positive class (here: "the answer is correct").

    ``input_kind`` says what the raw scores are: ``"probability"`` (values in [0, 1], the default) or
    ``"logit"`` (any finite real). Every calibrator is monotone non-decreasing and returns values in [0, 1].
    Subclasses register themselves by ``kind``, which names them in ``calibrator.json``.
    """

    kind: ClassVar[str]
    fits_from_feedback: ClassVar[bool] = True
    """Fitted from raw scores and outcomes alone, built without arguments: what `router calibrate
    --from-feedback` has. A calibrator that needs more says False, and that command does not offer it."""

    def __init_subclass__(cls, *, kind: str, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if kind in CALIBRATORS:
            raise TypeError(f"calibrator kind {kind!r} is already registered by {CALIBRATORS[kind].__name__}")
        cls.kind = kind
        CALIBRATORS[kind] = cls

    def __init__(self, *, input_kind: ScoreKind = "probability") -> None:
        if input_kind not in ("probability", "logit"):
            raise ValueError(f"input_kind must be 'probability' or 'logit'; got {input_kind!r}")
        self.input_kind: ScoreKind = input_kind
        self.fitted = False

    def fit(self, scores: ArrayLike, labels: ArrayLike) -> Self:
        x = self._scores(scores)
        y = as_labels(labels, len(x))
        require_both_classes(y, f"fitting {type(self).__name__}")
        self._fit(x, y)
        self.fitted = True
        return self

    def transform(self, scores: ArrayLike) -> FloatArray:
        if not self.fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit() or load() first")
        return self._transform(self._scores(scores))

    def to_dict(self) -> dict[str, Any]:
        if not self.fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted; there is nothing to save")
        return {
            "format": FORMAT,
            "version": VERSION,
            "kind": self.kind,
            "input_kind": self.input_kind,
            "params": self._get_params(),
        }

    def save(self, path: str | Path) -> Path:
        """Write ``calibrator.json``; JSON writes floats as their shortest repr, so a reload is bit-exact."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8")
        return path

    def _logits(self, x: FloatArray) -> FloatArray:
        if self.input_kind == "logit":
            return x
        p = np.clip(x, LOGIT_EPS, 1.0 - LOGIT_EPS)
        return np.log(p) - np.log1p(-p)

    def _scores(self, scores: ArrayLike) -> FloatArray:
        return as_scores(scores, probability=self.input_kind == "probability")

    @abstractmethod
    def _fit(self, x: FloatArray, y: FloatArray) -> None: ...

    @abstractmethod
    def _transform(self, x: FloatArray) -> FloatArray: ...

    @abstractmethod
    def _get_params(self) -> dict[str, Any]:
        """Fitted state as plain Python floats, ints and lists (never numpy scalars, which JSON rejects)."""

    @abstractmethod
    def _set_params(self, params: Mapping[str, Any]) -> None: ...


def fittable_kinds() -> list[str]:
    """The registered kinds that `fits_from_feedback`, in registration order, read when asked (so a
    calibrator registered after import is offered too)."""
    return [kind for kind, calibrator in CALIBRATORS.items() if calibrator.fits_from_feedback]


def from_dict(data: Mapping[str, Any]) -> Calibrator:
    """Rebuild a fitted calibrator from ``Calibrator.to_dict`` output, checking the format and version."""
    if data.get("format") != FORMAT:
        raise ValueError(f"not a calibrator file: format is {data.get('format')!r}, expected {FORMAT!r}")
    if data.get("version") != VERSION:
        raise ValueError(f"unsupported calibrator version {data.get('version')!r}; this code reads {VERSION}")
    kind = data.get("kind")
    if kind not in CALIBRATORS:
        raise ValueError(f"unknown calibrator kind {kind!r}; known kinds: {sorted(CALIBRATORS)}")
    try:
        calibrator = CALIBRATORS[kind](input_kind=data["input_kind"])
        calibrator._set_params(data["params"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"malformed {kind} calibrator: {error!r}") from None
    calibrator.fitted = True
    return calibrator


def load(path: str | Path) -> Calibrator:
    """Load whichever calibrator kind was saved at ``path``."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return from_dict(data)


def sigmoid(z: FloatArray) -> FloatArray:
    # One formula for all z keeps the map monotone in floating point; exp overflow only yields an exact 0.
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-z))


def finite_float(value: Any, name: str) -> float:
    number = float(value)
    if not np.isfinite(number):
        raise ValueError(f"{name} must be finite; got {number}")
    return number


def float_list(values: Any, name: str) -> FloatArray:
    array = np.asarray([finite_float(v, name) for v in values], dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty list of numbers")
    return array
