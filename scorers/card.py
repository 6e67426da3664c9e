"""`scorer.json`: what a trained scorer folder is, and how it was made."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from localmodel import Pooling

CARD = "scorer.json"
CALIBRATOR_FILE = "calibrator.json"


class TargetCard(BaseModel):
    """One model a scorer predicts: its calibrator and what it was trained on."""

    model_config = ConfigDict(extra="allow")

    model: str
    calibrator: str | None = None
    """The calibrator file in the folder (None: uncalibrated)."""
    base_rate: float | None = None
    """Share of this model's training rows it answered correctly."""
    rows: int | None = None
    """Labelled training rows for this model."""
    head: str | None = None
    """A head of its own (`router add-target`): its file in the folder, read at `layer`. None: a row of the
    jointly trained head.safetensors, at the card's layer."""
    layer: int | None = None
    """The decoder layer (1-based) its own head reads."""


class TaskHeadCard(BaseModel):
    """The kind-of-request head: a softmax over task families on the states the certainty heads read."""

    model_config = ConfigDict(extra="allow")

    families: list[str]
    """In the order of the head's outputs."""
    file: str = "task_head.safetensors"


class FamilyHeadCard(BaseModel):
    """A certainty head for one model on one task family (`router train-family-heads`): read instead of the
    model's own head where the task head takes the request for that family. Its output is on the model's
    raw scale (its calibration folded through the inverse of the model's calibrator), so it needs no
    calibrator of its own."""

    model_config = ConfigDict(extra="allow")

    model: str
    family: str
    head: str
    """Its file in the folder: a weight row and a bias."""
    layer: int
    """The decoder layer (1-based) it reads."""


class ScorerCard(BaseModel):
    # Training writes data provenance and metrics beside these fields; keep them when re-saving.
    model_config = ConfigDict(extra="allow")

    method: Literal["head", "intrinsic"]
    base_model: str
    layer: int | None = None
    """For `head`: the decoder layer (1-based) whose states the head reads."""
    pooling: Pooling = "last"
    """For `head`: which of that layer's states it reads (see `localmodel.model.Pooling`)."""
    prompt_format: str = "chat_template+generation_prompt"
    targets: list[TargetCard] = []
    """The models it predicts, in the order of the head's outputs; a folder written before scorers predicted
    several models has none and predicts `base_model`, calibrated by calibrator.json."""
    task_head: TaskHeadCard | None = None
    """For `head`: the kind-of-request head beside the certainty heads, if one was fitted."""
    family_heads: list[FamilyHeadCard] = []
    """For `head` with a task head: certainty heads of one family each, read where the task head sees it."""

    def predicted(self, folder: Path) -> list[TargetCard]:
        if self.targets:
            return self.targets
        has_calibrator = (folder / CALIBRATOR_FILE).is_file()
        return [TargetCard(model=self.base_model, calibrator=CALIBRATOR_FILE if has_calibrator else None)]

    @classmethod
    def load(cls, folder: Path) -> ScorerCard:
        path = folder / CARD
        if not path.is_file():
            raise FileNotFoundError(f"{folder}: not a scorer folder (no {CARD})")
        return cls.model_validate_json(path.read_text())

    def save(self, folder: Path) -> Path:
        path = folder / CARD
        path.write_text(self.model_dump_json(indent=2) + "\n")
        return path

    def extra(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def folder_digest(folder: Path, names: list[str]) -> str:
    """A short hash of the files that determine a scorer's output."""
    digest = hashlib.sha256()
    for name in names:
        path = folder / name
        if path.is_file():
            digest.update(name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]
