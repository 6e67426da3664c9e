"""Granite-style certainty intrinsic: after the answer, an invocation makes an adapter emit a score digit.

The adapter folder is a PEFT adapter plus an `io.yaml` in the published Granite format; a plain LoRA and
an activated LoRA (aLoRA) both load. With aLoRA the adapter is inactive before the invocation, so the
conversation and draft are run once with the base weights and only the invocation runs with the adapter,
on top of that cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

import calibrators
from localmodel import Message
from scorers.base import RawScore, ScoreItem, Scorer, ScorerSettings
from scorers.card import CALIBRATOR_FILE, CARD, ScorerCard, folder_digest

# torch is imported where the scorer runs, never by importing this module: registering the scorer
# (`import scorers`, a policy check) must not load it.
if TYPE_CHECKING:
    import torch

    from localmodel import LocalModel

ADAPTER_NAME = "certainty_intrinsic"
DEFAULT_INVOCATION = "<certainty>"


@dataclass(frozen=True)
class IOConfig:
    """The parts of a Granite `io.yaml` that turn the adapter's output into a number."""

    invocation: str
    field: str | None
    """The JSON field holding the category (`{"score": "7"}`), or None for a bare category."""
    categories_to_values: dict[str, float]
    max_completion_tokens: int

    @classmethod
    def load(cls, path: Path) -> IOConfig:
        data: dict[str, Any] = yaml.safe_load(path.read_text()) or {}
        likelihood = next(
            (t for t in data.get("transformations") or [] if t.get("type") == "likelihood"), None
        )
        if likelihood is None or not likelihood.get("categories_to_values"):
            raise ValueError(f"{path}: no likelihood transformation with categories_to_values")
        input_path = likelihood.get("input_path") or []
        if len(input_path) > 1:
            raise ValueError(f"{path}: input_path deeper than one field is not supported: {input_path}")
        return cls(
            invocation=data.get("instruction") or DEFAULT_INVOCATION,
            field=str(input_path[0]) if input_path else None,
            categories_to_values={str(k): float(v) for k, v in likelihood["categories_to_values"].items()},
            max_completion_tokens=int((data.get("parameters") or {}).get("max_completion_tokens", 12)),
        )

    @property
    def answer_prefix(self) -> str:
        """What the adapter writes before the category; we write it for it and read the next token."""
        return f'{{"{self.field}": "' if self.field else ""

    def expected_value(self, category_probs: dict[str, float]) -> float:
        """Mean value under the category distribution, renormalised over the known categories."""
        total = sum(category_probs.values())
        return sum(p * self.categories_to_values[c] for c, p in category_probs.items()) / total


def certainty_suffix(
    model: LocalModel, messages: list[Message], answer: str, io: IOConfig
) -> tuple[str, str]:
    """(conversation with the answer, the invocation turn and the answer prefix) as chat-template text."""
    answered = [*messages, {"role": "assistant", "content": answer}]
    prefix = model.prompt_text(answered, generation_prompt=False)
    full = model.prompt_text([*answered, {"role": "user", "content": io.invocation}]) + io.answer_prefix
    if not full.startswith(prefix):
        raise ValueError(
            f"{model.ref}: the chat template rewrites earlier turns; cannot split off the invocation"
        )
    return prefix, full[len(prefix) :]


class IntrinsicScorer(Scorer, method="intrinsic"):
    needs_adapter = True

    def __init__(self, model: LocalModel, folder: Path) -> None:
        self.model, self.folder = model, folder
        self.io = IOConfig.load(folder / "io.yaml")
        model.load_adapter(folder, ADAPTER_NAME)
        self.activated = bool(getattr(model.adapter_config(ADAPTER_NAME), "alora_invocation_tokens", None))
        self.category_ids = self._category_token_ids()
        # A Granite folder has no scorer.json: it judges the model it is loaded on.
        card = ScorerCard.load(folder) if (folder / CARD).is_file() else None
        self.targets = (card.predicted(folder)[0].model if card else model.ref,)
        calibrator_path = folder / CALIBRATOR_FILE
        if calibrator_path.is_file():
            self.calibrators = {self.primary: calibrators.load(calibrator_path)}
        files = ["io.yaml", "adapter_config.json", "adapter_model.safetensors", "calibrator.json"]
        self.version = f"intrinsic:{folder_digest(folder, files)}:{model.ref}"

    @classmethod
    def build(cls, model: LocalModel, settings: ScorerSettings) -> IntrinsicScorer:
        assert settings.adapter is not None
        return cls(model, settings.adapter)

    def _category_token_ids(self) -> dict[str, int]:
        ids = {}
        for category in self.io.categories_to_values:
            tokens = self.model.tokenizer(category, add_special_tokens=False).input_ids
            if len(tokens) != 1:
                raise ValueError(f"{self.folder}/io.yaml: category {category!r} is not a single token")
            ids[category] = tokens[0]
        return ids

    def score_batch(self, items: list[ScoreItem]) -> list[RawScore]:
        drafts = self.model.draft_batch([i.messages for i in items], max(i.max_new_tokens for i in items))
        raw = self.raw_scores([i.messages for i in items], [d.text for d in drafts])
        return [RawScore({self.primary: float(r)}, d) for r, d in zip(raw, drafts, strict=True)]

    def raw_scores(self, conversations: list[list[Message]], answers: list[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self._raw_scores(conversations, answers)

    def _raw_scores(self, conversations: list[list[Message]], answers: list[str]) -> np.ndarray:
        parts = [
            certainty_suffix(self.model, m, a, self.io) for m, a in zip(conversations, answers, strict=True)
        ]
        tokenize = self.model.tokenizer
        prefixes = [tokenize(p, add_special_tokens=False).input_ids for p, _ in parts]
        suffixes = [tokenize(s, add_special_tokens=False).input_ids for _, s in parts]
        logits = (
            self._suffix_logits(prefixes, suffixes)
            if self.activated
            else self._full_logits(prefixes, suffixes)
        )
        ids = list(self.category_ids.values())
        probs = logits.float().softmax(dim=-1)[:, ids].cpu().numpy()
        names = list(self.category_ids)
        return np.array([self.io.expected_value(dict(zip(names, row, strict=True))) for row in probs])

    def _full_logits(self, prefixes: list[list[int]], suffixes: list[list[int]]) -> torch.Tensor:
        """Plain LoRA: the adapter changes every position, so the whole sequence runs with it."""
        batch = self.model.pad_batch([p + s for p, s in zip(prefixes, suffixes, strict=True)])
        with self.model.adapter(ADAPTER_NAME) as model:
            return model(**batch, use_cache=False, logits_to_keep=1).logits[:, -1, :]

    def _suffix_logits(self, prefixes: list[list[int]], suffixes: list[list[int]]) -> torch.Tensor:
        """aLoRA: the base model's cache of the conversation, then only the invocation with the adapter."""
        import torch

        if len({tuple(s) for s in suffixes}) != 1:
            raise ValueError("invocation suffixes differ within a batch")
        prefix = self.model.pad_batch(prefixes)
        with self.model.adapter(None) as base:
            cache = base(**prefix, use_cache=True, logits_to_keep=1).past_key_values
        rows, length = len(suffixes), len(suffixes[0])
        suffix = torch.tensor(suffixes, device=self.model.device)
        mask = torch.cat(
            [prefix["attention_mask"], torch.ones(rows, length, dtype=torch.long, device=suffix.device)], 1
        )
        start = prefix["attention_mask"].sum(1, keepdim=True)
        positions = start + torch.arange(length, device=suffix.device)
        with self.model.adapter(ADAPTER_NAME) as model:
            out = model(
                input_ids=suffix,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        return out.logits[:, -1, :]
