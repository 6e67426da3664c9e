"""The scorer contract: a scorer turns conversations into raw scores, one per model it predicts.

Scorers never calibrate: `calibrate` below is the one place raw scores become confidences, and the router
calls it with the calibrators in force (the policy's for a target where it names one, else the scorer
folder's). Each scorer class registers itself under its `method`, the name a policy uses for it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    from calibrators import Calibrator
    from localmodel import Draft, LocalModel, Message, Precision

SCORERS: dict[str, type[Scorer]] = {}


@dataclass(frozen=True)
class ScoreItem:
    messages: list[Message]
    max_new_tokens: int = 256
    """The draft length, for scorers that draft."""


@dataclass(frozen=True)
class RawScore:
    """One conversation's scores before calibration, and the draft they are about (post-generation)."""

    raw: dict[str, float]
    """The model whose answer is judged -> the scorer's own output for it."""
    draft: Draft | None = None
    task: dict[str, float] | None = None
    """The kind of request: task family -> probability, from scorers with a task head (else None)."""

    @property
    def family(self) -> str | None:
        """The likeliest task family, or None without a task head."""
        return max(self.task, key=self.task.__getitem__) if self.task else None


@dataclass(frozen=True)
class ScorerSettings:
    """What a policy may set for a scorer; each class reads the fields it uses."""

    adapter: Path | None = None
    samples: int = 5
    temperature: float = 0.7
    precision: Precision = "auto"
    """The head scorer's forward pass: auto (bf16 on a CPU with AMX, else the model's own), fp32 or bf16."""


class Scorer(ABC):
    method: ClassVar[str]
    pre_generation: ClassVar[bool] = False
    """Scores from the conversation alone, before any answer exists (else it drafts the answer itself)."""
    needs_adapter: ClassVar[bool] = False
    """Reads a trained scorer folder (`scorer.adapter` in a policy)."""

    targets: tuple[str, ...]
    """The models whose correctness it predicts; the first is the primary, the one rules test by default."""
    version: str
    """Changes whenever the scorer's output could: part of the score cache key."""
    calibrators: Mapping[str, Calibrator] = {}
    """The scorer folder's calibrator per target; a target without one has raw scores as confidences."""
    reference_scores: list[float] | None = None
    """The primary target's raw scores on the scorer's evaluation set, the default reference for drift."""
    tasks: tuple[str, ...] = ()
    """The task families its task head tells apart; empty without one (every `RawScore.task` is None)."""

    def __init_subclass__(cls, *, method: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if method is None:
            return
        if method in SCORERS:
            raise TypeError(f"scorer method {method!r} is already registered by {SCORERS[method].__name__}")
        cls.method = method
        SCORERS[method] = cls

    @classmethod
    @abstractmethod
    def build(cls, model: LocalModel, settings: ScorerSettings) -> Scorer:
        """The scorer for `model`, as a policy configures it."""

    @abstractmethod
    def score_batch(self, items: list[ScoreItem]) -> list[RawScore]:
        """Blocking; the service runs it on the model's worker thread."""

    @property
    def primary(self) -> str:
        return self.targets[0]

    def close(self) -> None:
        """Blocking, on the model's worker: free what it loaded into the shared model, once it scores no
        more (a reload replaced it). Most scorers load nothing of their own."""
        return None


def build_scorer(method: str, model: LocalModel, settings: ScorerSettings) -> Scorer:
    if method not in SCORERS:
        raise ValueError(f"unknown scorer method '{method}' (known: {', '.join(SCORERS)})")
    scorer = SCORERS[method]
    if scorer.needs_adapter and settings.adapter is None:
        raise ValueError(f"the {method} scorer needs an adapter folder")
    return scorer.build(model, settings)


def calibrate(target: str, raw: ArrayLike, calibrators: Mapping[str, Calibrator]) -> np.ndarray:
    """One target's raw scores to confidences: its calibrator's, or the raw scores where it has none."""
    scores = np.asarray(raw, dtype=np.float64)
    return calibrators[target].transform(scores) if target in calibrators else scores
