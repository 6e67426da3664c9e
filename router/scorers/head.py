from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

import calibrators
from router.local_model import LocalModel
from router.scorers.base import Score, ScoreItem, Scorer
from router.scorers.card import ScorerCard, folder_digest

ADAPTER_NAME = "certainty_head"
HEAD_FILE = "head.safetensors"
CALIBRATOR_FILE = "calibrator.json"


class HeadScorer(Scorer):
    """EliCal-style pre-generation scorer: LoRA on the base model, a linear head on the prompt's states.

    One forward pass over the prompt, stopped at the layer the head reads; nothing is generated.
    """

    name = "head"
    pre_generation = True

    def __init__(self, model: LocalModel, folder: Path) -> None:
        card = ScorerCard.load(folder)
        if card.method != "head":
            raise ValueError(f"{folder}: a '{card.method}' scorer, not a head scorer")
        self.model, self.folder = model, folder
        self.layer, self.pooling = card.layer or model.num_layers, card.pooling
        # A head on frozen states (a probe) has no adapter; it scores with the base weights.
        self.adapter = ADAPTER_NAME if (folder / "adapter_config.json").is_file() else None
        if self.adapter:
            model.load_adapter(folder, self.adapter)
        weights = load_file(str(folder / HEAD_FILE))
        self.weight = weights["weight"].reshape(-1).float().to(model.device)
        self.bias = weights["bias"].reshape(()).float().to(model.device)
        self.calibrator = (
            calibrators.load(folder / CALIBRATOR_FILE) if (folder / CALIBRATOR_FILE).is_file() else None
        )
        self.reference_scores = card.extra().get("reference_scores")
        files = [HEAD_FILE, CALIBRATOR_FILE, "adapter_model.safetensors", "adapter_config.json"]
        self.version = f"head:{folder_digest(folder, files)}:layer{self.layer}:{self.pooling}"

    def raw_scores(self, items: list[ScoreItem]) -> np.ndarray:
        texts = [self.model.prompt_text(i.messages) for i in items]
        states = self.model.prompt_states(texts, self.layer, self.pooling, self.adapter)
        return torch.sigmoid(states @ self.weight + self.bias).cpu().numpy().astype(np.float64)

    def score_batch(self, items: list[ScoreItem]) -> list[Score]:
        raw = self.raw_scores(items)
        calibrated = self.calibrator.transform(raw) if self.calibrator else raw
        return [Score(float(c), float(r)) for c, r in zip(calibrated, raw, strict=True)]


def save_head(folder: Path, weight: torch.Tensor, bias: torch.Tensor, card: ScorerCard) -> None:
    """Write the head and its card; the PEFT adapter (if any) and calibrator are saved beside them."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        "weight": weight.detach().reshape(1, -1).float().cpu(),
        "bias": bias.detach().reshape(1).float().cpu(),
    }
    save_file(tensors, str(folder / HEAD_FILE))
    card.save(folder)
