"""Granite-style certainty intrinsic: supervised fine-tuning to answer the invocation with {"score": "X"}.

The target digit comes from how often the model's own answers to the question were right: the greedy answer
and its samples together (K+1 answers), binned into tenths. With `activated` the adapter is an aLoRA that
switches on at the invocation, so serving reuses the base model's cache of the conversation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from peft import LoraConfig, get_peft_model

import calibrators
from localmodel.model import LocalModel
from scorers.card import ScorerCard
from scorers.intrinsic import IOConfig, certainty_suffix
from train.data import QARecord, prompt
from train.loop import Loop, LoopSettings, Objective, Progress, Stage, batches_of, save_adapter

Row = dict[str, Any]

IO_YAML = """\
# Certainty intrinsic, Granite io.yaml format: the adapter answers the invocation with {"score": "X"}.
model: ~
response_format: |
  {"type": "object", "required": ["score"],
   "properties": {"score": {"type": "string", "enum": ["0","1","2","3","4","5","6","7","8","9"]}}}
transformations:
  - type: likelihood
    categories_to_values:  # each digit X maps to 0.1 * X + 0.05
      {0: 0.05, 1: 0.15, 2: 0.25, 3: 0.35, 4: 0.45, 5: 0.55, 6: 0.65, 7: 0.75, 8: 0.85, 9: 0.95}
    input_path: [score]
    output_name: certainty
instruction: "<certainty>"
parameters:
  max_completion_tokens: 12
"""


@dataclass(frozen=True)
class IntrinsicSettings:
    activated: bool = True
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    learning_rate: float = 2e-4
    batch_size: int = 8
    gradient_accumulation: int = 1
    gradient_checkpointing: bool = False
    epochs: float = 1.0
    warmup_ratio: float = 0.1
    eval_every: int = 50
    patience: int = 4
    checkpoint_every: int = 100
    seed: int = 0


def target_digit(row: Row) -> int:
    """The share of the model's K+1 answers that were correct, in tenths (0..9)."""
    samples = len(row.get("samples") or [])
    right = float(row["correct"]) + samples * float(row.get("sample_accuracy") or 0.0)
    return min(9, int(10 * right / (samples + 1)))


def train_intrinsic(
    base: str,
    train: list[Row],
    dev: list[Row],
    out: Path,
    settings: IntrinsicSettings,
    resume: bool,
    log: Callable[[str], None],
) -> tuple[ScorerCard, Progress]:
    torch.manual_seed(settings.seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "io.yaml").write_text(IO_YAML)
    objective = IntrinsicTrainer(LocalModel(base), IOConfig.load(out / "io.yaml"), settings, train[0])
    accelerator = Accelerator(gradient_accumulation_steps=settings.gradient_accumulation)
    stages = [Stage(1, train, "digit", settings.epochs)]
    progress = Loop(LoopSettings.of(settings), out, accelerator).run(objective, stages, dev, resume, log)
    save_adapter(objective.model, base, out)
    card = ScorerCard(method="intrinsic", base_model=base)
    card.save(out)
    return card, progress


Example = tuple[list[int], list[int], list[int]]


class IntrinsicTrainer(Objective):
    """Cross-entropy on the score digit and the closing of the JSON, after the invocation."""

    def __init__(self, local: LocalModel, io: IOConfig, settings: IntrinsicSettings, first: Row) -> None:
        self.local, self.io, self.settings = local, io, settings
        self._examples: dict[str, Example] = {}
        invocation = self.example(first)[1] if settings.activated else None
        config = LoraConfig(
            task_type="CAUSAL_LM",
            r=settings.lora_r,
            lora_alpha=settings.lora_alpha,
            lora_dropout=settings.lora_dropout,
            target_modules="all-linear",
            alora_invocation_tokens=invocation,
        )
        self.model = get_peft_model(local.model, config)
        if settings.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.category_ids = [
            local.tokenizer(c, add_special_tokens=False).input_ids[0] for c in io.categories_to_values
        ]

    def example(self, row: Row) -> Example:
        """(conversation and answer, invocation suffix, target) token ids, split as serving splits them."""
        if row["id"] not in self._examples:
            prefix, suffix = certainty_suffix(
                self.local, prompt(QARecord.of_label(row)), row["greedy"], self.io
            )
            tokenize = self.local.tokenizer
            self._examples[row["id"]] = (
                tokenize(prefix, add_special_tokens=False).input_ids,
                tokenize(suffix, add_special_tokens=False).input_ids,
                tokenize(f'{target_digit(row)}"}}', add_special_tokens=False).input_ids,
            )
        return self._examples[row["id"]]

    def modules(self) -> list[torch.nn.Module]:
        return [self.model]

    def param_groups(self) -> list[dict[str, Any]]:
        return [
            {
                "params": [p for p in self.model.parameters() if p.requires_grad],
                "lr": self.settings.learning_rate,
            }
        ]

    def loss(self, prepared: list[Any], batch: list[Row], target: str) -> torch.Tensor:
        loss: torch.Tensor = prepared[0](**self._inputs(batch)).loss
        return loss

    @torch.no_grad()
    def evaluate(self, dev: list[Row], target: str) -> tuple[float, float]:
        """Dev loss, and the AUROC of the expected certainty (read as serving reads it) for correctness."""
        self.model.eval()
        losses, certainty = [], []
        for batch in batches_of(dev, 16):
            inputs = self._inputs(batch)
            out = self.model(**inputs)
            losses.append(out.loss.item() * len(batch))
            digit_at = [len(self.example(r)[2]) + 1 for r in batch]  # the position that predicts the digit
            logits = torch.stack([out.logits[i, -k] for i, k in enumerate(digit_at)])
            probs = torch.softmax(logits.float(), -1)[:, self.category_ids].cpu().numpy()
            names = list(self.io.categories_to_values)
            certainty += [self.io.expected_value(dict(zip(names, p, strict=True))) for p in probs]
        correct = np.array([float(r["correct"]) for r in dev])
        return sum(losses) / len(dev), calibrators.auroc(np.array(certainty), correct)

    def trainable_state(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"adapter": {k: v for k, v in self.model.state_dict().items() if "lora_" in k}}

    def load_trainable_state(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        self.model.load_state_dict(state["adapter"], strict=False)

    def _inputs(self, batch: list[Row]) -> dict[str, torch.Tensor]:
        examples = [self.example(r) for r in batch]
        padded = self.local.pad_batch([p + s + t for p, s, t in examples])
        labels = torch.full_like(padded["input_ids"], -100)
        for i, (_, _, target) in enumerate(examples):
            labels[i, -len(target) :] = torch.tensor(target)
        return {**padded, "labels": labels}
