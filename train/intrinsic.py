"""Granite-style certainty intrinsic: supervised fine-tuning to answer the invocation with {"score": "X"}.

The target digit comes from how often the model's own answers to the question were right: the greedy answer
and its samples together (K+1 answers), binned into tenths. With `activated` the adapter is an aLoRA that
switches on at the invocation, so serving reuses the base model's cache of the conversation.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import get_cosine_schedule_with_warmup

from router.local_model import LocalModel
from router.scorers.card import ScorerCard
from router.scorers.intrinsic import IOConfig, certainty_suffix
from train.data import QARecord, prompt

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
    epochs: float = 1.0
    warmup_ratio: float = 0.1
    seed: int = 0


def target_digit(row: Row) -> int:
    """The share of the model's K+1 answers that were correct, in tenths (0..9)."""
    samples = len(row.get("samples") or [])
    right = float(row["correct"]) + samples * float(row.get("sample_accuracy") or 0.0)
    return min(9, int(10 * right / (samples + 1)))


def train_intrinsic(
    base: str, train: list[Row], out: Path, settings: IntrinsicSettings, log: Callable[[str], None]
) -> ScorerCard:
    torch.manual_seed(settings.seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "io.yaml").write_text(IO_YAML)
    io = IOConfig.load(out / "io.yaml")
    local = LocalModel(base)
    examples = [_example(local, io, row) for row in train]
    invocation = examples[0][1] if settings.activated else None
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules="all-linear",
        alora_invocation_tokens=invocation,
    )
    model = get_peft_model(local.model, config)
    model.train()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=settings.learning_rate
    )
    order = list(range(len(examples))) * math.ceil(settings.epochs)
    random.Random(settings.seed).shuffle(order)
    steps = max(1, int(len(examples) * settings.epochs) // settings.batch_size)
    schedule = get_cosine_schedule_with_warmup(optimizer, int(settings.warmup_ratio * steps), steps)
    for step in range(steps):
        batch = [examples[i] for i in order[step * settings.batch_size : (step + 1) * settings.batch_size]]
        loss = _loss(model, local, batch)
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if (step + 1) % 20 == 0 or step + 1 == steps:
            log(f"intrinsic step {step + 1}/{steps}: loss {loss.item():.4f}")
    model.save_pretrained(str(out))
    card = ScorerCard(method="intrinsic", base_model=base)
    card.save(out)
    return card


def _example(local: LocalModel, io: IOConfig, row: Row) -> tuple[list[int], list[int], list[int]]:
    """(conversation with the answer, invocation suffix, target) token ids, split as serving splits them."""
    prefix, suffix = certainty_suffix(local, prompt(QARecord.of_label(row)), row["greedy"], io)
    tokenize = local.tokenizer
    target = f'{target_digit(row)}"}}'
    return (
        tokenize(prefix, add_special_tokens=False).input_ids,
        tokenize(suffix, add_special_tokens=False).input_ids,
        tokenize(target, add_special_tokens=False).input_ids,
    )


def _loss(model: Any, local: LocalModel, batch: list[tuple[list[int], list[int], list[int]]]) -> torch.Tensor:
    """Cross-entropy on the score digit and the closing of the JSON only."""
    rows = [p + s + t for p, s, t in batch]
    padded = local.pad_batch(rows)
    labels = torch.full_like(padded["input_ids"], -100)
    for i, (_, _, target) in enumerate(batch):
        labels[i, -len(target) :] = torch.tensor(target)
    return model(**padded, labels=labels).loss
