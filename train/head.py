"""EliCal head training: LoRA + a linear head per target model on the prompt's states, sigmoid output,
MSE loss.

Stage 1 regresses the primary model's self-consistency on every training row that has it; stage 2 regresses
each target's correctness on the rows that target labelled (rows come merged, see `train.targets`), all
heads on one set of LoRA weights. The loop itself (accelerate, schedule, early stopping, checkpoints) is
`train.loop`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

import calibrators
from localmodel.catalog import resolve
from localmodel.model import Pooling, pool, prompt_state
from train.data import QARecord, prompt
from train.loop import Loop, LoopSettings, Objective, Progress, Stage, in_length_order
from train.prefix import FrozenPrefix
from train.probe import LinearProbe

Row = dict[str, Any]


@dataclass(frozen=True)
class HeadSettings:
    layer: int | None = None
    """None: choose among `candidate_fractions` by how well a frozen probe transfers across sources."""
    candidate_fractions: tuple[float, ...] = (1 / 3, 1 / 2, 2 / 3, 5 / 6, 1)
    """Layers tried when choosing, as fractions of the depth (10, 15, 20, 25, 30 of SmolLM2's 30)."""
    layer_tolerance: float = 0.01
    """Dev probe AUROC this close to the best is a tie (its standard error on ~1k dev rows is ~0.03)."""
    pooling: Pooling = "last+mean"
    """What the head reads at its layer; see `localmodel.model.Pooling`."""
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: str = "all-linear"
    lora_layers: int | None = 4
    """LoRA on this many layers directly below the head (None: all of them). The frozen layers under them
    then run once per row, not once per step: on a CPU that is the difference between minutes and hours."""
    learning_rate: float = 2e-4
    head_learning_rate: float = 1e-3
    batch_size: int = 16
    gradient_accumulation: int = 1
    gradient_checkpointing: bool = False
    stage1_epochs: float = 1.0
    stage2_epochs: float = 2.0
    stage2_size: int = 1000
    warmup_ratio: float = 0.1
    eval_every: int = 50
    patience: int = 4
    checkpoint_every: int = 100
    seed: int = 0


class HeadTrainer(Objective):
    def __init__(
        self, base: str, settings: HeadSettings, out: Path, targets: list[str] | None = None
    ) -> None:
        """`targets`: the models predicted, the base model's own correctness first (default: only it)."""
        self.settings, self.out = settings, out
        self.targets = targets or [base]
        location = resolve(base)
        self.tokenizer = AutoTokenizer.from_pretrained(location, padding_side="left")
        self.accelerator = Accelerator(
            gradient_accumulation_steps=settings.gradient_accumulation,
            mixed_precision="bf16" if torch.cuda.is_available() else "no",
        )
        torch.manual_seed(settings.seed)
        self.base_model = AutoModelForCausalLM.from_pretrained(location)
        self.hidden = self.base_model.config.hidden_size
        self.num_layers = self.base_model.config.num_hidden_layers
        self.model: Any = None  # the PEFT model, once training starts
        self.prefix: FrozenPrefix | None = None
        width = self.hidden * (2 if settings.pooling == "last+mean" else 1)
        self.head = torch.nn.Linear(width, len(self.targets))
        self.layer = self.num_layers

    # Layer choice -----------------------------------------------------------------------------------------

    def choose_layer(self, train: list[Row], dev: list[Row]) -> tuple[int, dict[int, float]]:
        """The candidate layer whose frozen states best predict correctness on data the probe never saw.

        Each free-form source's dev rows are scored by a probe fitted on the other sources' training rows,
        and the AUROCs averaged: a scorer serves traffic unlike its training mix, and on the shared QA sets
        in-source dev AUROC preferred shallower layers that transfer worse (docs/scorer-quality.md).
        Multiple-choice sources train the probes but are not judged: within one of them the ranking is near
        chance at every layer, so they would only add noise. With fewer than two sources to judge, one
        probe on every training row is judged on all of dev.
        """
        fractions = self.settings.candidate_fractions
        candidates = sorted({max(1, round(f * self.num_layers)) for f in fractions})
        # The primary's labels choose the layer: the one model every scorer of this base predicts.
        train, dev = (
            [r for r in train if r["correct"] is not None],
            [r for r in dev if r["correct"] is not None],
        )
        fit_rows = random.Random(self.settings.seed).sample(train, min(3000, len(train)))
        features = self._frozen_states(fit_rows + dev, candidates)
        y_fit = np.array([r["correct"] for r in fit_rows], dtype=float)
        y_dev = np.array([r["correct"] for r in dev], dtype=float)
        folds = transfer_folds(fit_rows, dev)
        scores = {}
        for layer in candidates:
            x_fit, x_dev = features[layer][: len(fit_rows)], features[layer][len(fit_rows) :]
            aurocs = [
                calibrators.auroc(
                    LinearProbe().fit(x_fit[fit], y_fit[fit]).transform(x_dev[judge]), y_dev[judge]
                )
                for fit, judge in folds
            ]
            scores[layer] = float(np.mean(aurocs))
        best = max(scores.values())
        # Within noise of the best, the shallowest: serving stops at the head's layer, so it is also cheapest.
        return min(k for k, v in scores.items() if v >= best - self.settings.layer_tolerance), scores

    @torch.inference_mode()
    def _frozen_states(self, rows: list[Row], layers: list[int]) -> dict[int, np.ndarray]:
        # The decoder alone: the output head's logits (batch x length x vocabulary) are never needed here.
        decoder = self.base_model.to(self.accelerator.device).eval().get_decoder()

        def batch(part: list[Row]) -> np.ndarray:
            encoded = self._encode(part)
            hidden = decoder(**encoded, output_hidden_states=True).hidden_states
            # The last layer's output is already normed; the others get the norm a head would apply.
            normed = [
                hidden[layer] if layer == self.num_layers else decoder.norm(hidden[layer]) for layer in layers
            ]
            pooled = [pool(states, encoded["attention_mask"], self.settings.pooling) for states in normed]
            return torch.stack(pooled, dim=1).float().cpu().numpy()  # rows x layers x features

        stacked = in_length_order(rows, batch)
        return {layer: stacked[:, i] for i, layer in enumerate(layers)}

    def _encode(self, rows: list[Row]) -> dict[str, torch.Tensor]:
        texts = [
            self.tokenizer.apply_chat_template(
                prompt(QARecord.of_label(r)), add_generation_prompt=True, tokenize=False
            )
            for r in rows
        ]
        ids = self.tokenizer(texts, add_special_tokens=False).input_ids
        width = max(len(i) for i in ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(i)) + i for i in ids])
        mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])
        batch = {
            "input_ids": input_ids,
            "attention_mask": mask,
            "position_ids": (mask.cumsum(-1) - 1).clamp(min=0),
        }
        return {k: v.to(self.accelerator.device) for k, v in batch.items()}

    # Training ---------------------------------------------------------------------------------------------

    def train(
        self, train: list[Row], dev: list[Row], layer: int, resume: bool, log: Callable[[str], None]
    ) -> Progress:
        s = self.settings
        lora = LoraConfig(
            task_type="CAUSAL_LM",
            r=s.lora_r,
            lora_alpha=s.lora_alpha,
            lora_dropout=s.lora_dropout,
            target_modules=self._lora_targets(self._first_adapted(layer), layer),
        )
        self.model = get_peft_model(self.base_model, lora)
        if s.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.layer = layer
        torch.nn.init.zeros_(self.head.weight)
        with torch.no_grad():
            for k, rate in enumerate(self.base_rates(train)):
                self.head.bias[k] = math.log(max(rate, 1e-3) / max(1 - rate, 1e-3))
        stage1 = [r for r in train if r.get("consistency") is not None]
        stage2 = random.Random(s.seed).sample(train, min(s.stage2_size, len(train)))
        plan = [(1, stage1, "consistency", s.stage1_epochs), (2, stage2, "correct", s.stage2_epochs)]
        if start := self._first_adapted(layer):
            self.prefix = FrozenPrefix(self.model.get_base_model().get_decoder(), start, self._encode)
            self.prefix.add(stage1 + stage2 + dev)
            log(f"layers 1-{start} frozen: their output kept for {len(self.prefix.states)} rows")
        stages = [Stage(number, rows, target, epochs) for number, rows, target, epochs in plan]
        return Loop(LoopSettings.of(s), self.out, self.accelerator).run(self, stages, dev, resume, log)

    def _first_adapted(self, layer: int) -> int:
        """How many layers stay frozen below the adapted ones."""
        adapted = self.settings.lora_layers
        return 0 if adapted is None else max(0, layer - adapted)

    def _lora_targets(self, start: int, layer: int) -> list[str]:
        """Linear layers below the head only: the ones above never reach it, so adapting them is waste."""
        decoder_layers = self.base_model.get_decoder().layers
        wanted = (
            set(self.settings.lora_targets.split(",")) if self.settings.lora_targets != "all-linear" else None
        )
        return [
            f"model.layers.{i}.{name}"
            for i, block in enumerate(decoder_layers[:layer])
            if i >= start
            for name, module in block.named_modules()
            if isinstance(module, torch.nn.Linear) and (wanted is None or name.rsplit(".", 1)[-1] in wanted)
        ]

    # The objective the shared loop trains ---------------------------------------------------------------

    def modules(self) -> list[torch.nn.Module]:
        return [self.model, self.head]

    def param_groups(self) -> list[dict[str, Any]]:
        return [
            {
                "params": [p for p in self.model.parameters() if p.requires_grad],
                "lr": self.settings.learning_rate,
            },
            {"params": self.head.parameters(), "lr": self.settings.head_learning_rate},
        ]

    def base_rates(self, rows: list[Row]) -> list[float]:
        return [
            float(np.mean([r["labels"][t] for r in rows if t in r["labels"]] or [0.0])) for t in self.targets
        ]

    def labels(self, rows: list[Row], target: str) -> tuple[np.ndarray, np.ndarray]:
        """(values, mask), rows x targets: stage 1's consistency is the primary's alone; correctness is
        each target's where it labelled the row."""
        values, mask = np.zeros((len(rows), len(self.targets))), np.zeros((len(rows), len(self.targets)))
        for i, row in enumerate(rows):
            if target == "consistency" and row.get("consistency") is not None:
                values[i, 0], mask[i, 0] = row["consistency"], 1
            elif target == "consistency" and row["correct"] is not None:  # dev rows without samples
                values[i, 0], mask[i, 0] = row["correct"], 1
            elif target == "correct":
                for k, model in enumerate(self.targets):
                    if model in row["labels"]:
                        values[i, k], mask[i, k] = row["labels"][model], 1
        return values, mask

    def loss(self, prepared: list[Any], batch: list[Row], target: str) -> torch.Tensor:
        model, head = prepared
        predicted = torch.sigmoid(head(self._states(self._decoder(model), batch).float()))
        values, mask = (
            torch.tensor(a, dtype=predicted.dtype, device=predicted.device)
            for a in self.labels(batch, target)
        )
        return ((predicted - values) ** 2 * mask).sum() / mask.sum().clamp(min=1)

    @torch.no_grad()
    def begin_stage(self, stage: Stage, log: Callable[[str], None]) -> None:
        """Before regressing correctness, the head becomes a logistic probe fitted on the current states:
        a LoRA step is then kept only where it beats that probe on dev (a probe is a strong baseline)."""
        if stage.target != "correct":
            return
        self.model.eval()
        states = self._all_states(stage.rows)
        values, mask = self.labels(stage.rows, "correct")
        for k, model in enumerate(self.targets):
            has = mask[:, k] == 1
            probe = LinearProbe().fit(states[has], values[has, k])
            self.head.weight[k].copy_(torch.from_numpy(probe.weights).reshape(-1))
            self.head.bias[k] = probe.bias
            log(f"stage {stage.number}: {model}'s head starts as a probe fitted on {int(has.sum())} rows")

    def trainable_state(self) -> dict[str, dict[str, torch.Tensor]]:
        adapter = {k: v for k, v in self.model.state_dict().items() if "lora_" in k}
        return {"adapter": adapter, "head": self.head.state_dict()}

    def load_trainable_state(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        self.model.load_state_dict(state["adapter"], strict=False)
        self.head.load_state_dict(state["head"])

    def _decoder(self, model: Any) -> Any:
        return self.accelerator.unwrap_model(model).get_base_model().get_decoder()

    @torch.no_grad()
    def evaluate(self, dev: list[Row], target: str) -> tuple[float, float]:
        """Masked MSE over every head, and the mean of the heads' AUROCs on correctness."""
        self.model.eval()
        predicted = self.predict(dev)
        values, mask = self.labels(dev, target)
        loss = float(((predicted - values) ** 2 * mask).sum() / max(mask.sum(), 1))
        correct, labelled = self.labels(dev, "correct")
        aurocs = [
            calibrators.auroc(predicted[has, k], correct[has, k])
            for k in range(len(self.targets))
            if 0 < correct[has := labelled[:, k] == 1, k].sum() < has.sum()
        ]
        return loss, float(np.mean(aurocs)) if aurocs else math.nan

    @torch.no_grad()
    def predict(self, rows: list[Row]) -> np.ndarray:
        """Rows x targets."""
        states = torch.from_numpy(self._all_states(rows)).to(self.head.weight)
        return torch.sigmoid(self.head(states)).cpu().numpy().astype(np.float64)

    @torch.no_grad()
    def _all_states(self, rows: list[Row]) -> np.ndarray:
        """The head's input for every row, in order (computed in batches of similar length)."""
        decoder = self.model.get_base_model().get_decoder()
        return in_length_order(rows, lambda batch: self._states(decoder, batch).float().cpu().numpy())

    def _states(self, decoder: Any, batch: list[Row]) -> torch.Tensor:
        if self.prefix is not None:
            return self.prefix.prompt_state(batch, self.layer, self.settings.pooling)
        return prompt_state(decoder, self._encode(batch), self.layer, self.settings.pooling)


Fold = tuple[np.ndarray, np.ndarray]


def transfer_folds(fit_rows: list[Row], dev: list[Row]) -> list[Fold]:
    """(rows to fit on, dev rows to judge) per judged source: see `HeadTrainer.choose_layer`."""
    y_fit = np.array([r["correct"] for r in fit_rows], dtype=float)
    y_dev = np.array([r["correct"] for r in dev], dtype=float)
    fit_source = np.array([r["source"] for r in fit_rows])
    dev_source = np.array([r["source"] for r in dev])
    multiple_choice = {r["source"] for r in dev if r.get("choices")}
    judged = [
        s
        for s in sorted(set(dev_source) - multiple_choice)
        if _ranks(y_dev[dev_source == s]) and _ranks(y_fit[fit_source != s]) and (fit_source == s).any()
    ]
    if len(judged) < 2:
        return [(np.ones(len(fit_rows), bool), np.ones(len(dev), bool))]
    return [(fit_source != s, dev_source == s) for s in judged]


def _ranks(labels: np.ndarray, at_least: int = 5) -> bool:
    """Enough of both outcomes for an AUROC to mean something."""
    return bool(labels.sum() >= at_least and (1 - labels).sum() >= at_least)
