"""The training loop both scorer methods share.

Runs under `accelerate` (one CPU, one GPU in bf16, or `accelerate launch` on several GPUs) with a cosine
schedule and warmup, gradient accumulation, evaluation on dev with early stopping (the best weights are
restored at the end), and atomic checkpoints that `--resume` continues from exactly.
"""

from __future__ import annotations

import math
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from transformers import get_cosine_schedule_with_warmup

from train.data import QARecord

Row = dict[str, Any]
CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class LoopSettings:
    batch_size: int = 16
    gradient_accumulation: int = 1
    warmup_ratio: float = 0.1
    eval_every: int = 50
    patience: int = 4
    """Evaluations without a better dev loss before a stage stops early."""
    checkpoint_every: int = 100
    seed: int = 0

    @classmethod
    def of(cls, settings: Any) -> LoopSettings:
        """The loop's share of a method's flat settings (fields of the same names)."""
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})


@dataclass(frozen=True)
class Stage:
    number: int
    rows: list[Row]
    target: str
    """The row field the loss regresses (EliCal: "consistency", then "correct")."""
    epochs: float


@dataclass
class Progress:
    """Where a run is; saved with every checkpoint so `--resume` continues exactly there."""

    stage: int = 1
    step: int = 0
    best_loss: float = math.inf
    best_step: int = 0
    bad_evals: int = 0
    history: list[dict[str, float | None]] = field(default_factory=list)


class Objective(ABC):
    """What one scorer method trains: its modules, its loss, and how dev judges it."""

    @abstractmethod
    def modules(self) -> list[torch.nn.Module]:
        """The modules accelerate prepares; `loss` receives the prepared ones in the same order."""

    @abstractmethod
    def param_groups(self) -> list[dict[str, Any]]: ...

    @abstractmethod
    def loss(self, prepared: list[Any], batch: list[Row], target: str) -> torch.Tensor: ...

    @abstractmethod
    def evaluate(self, dev: list[Row], target: str) -> tuple[float, float]:
        """(dev loss, AUROC of the prediction against correctness on dev)."""

    def begin_stage(self, stage: Stage, log: Callable[[str], None]) -> None:
        """Called before a stage's first step (not when resuming inside it); nothing to do by default."""
        return None

    @abstractmethod
    def trainable_state(self) -> dict[str, dict[str, torch.Tensor]]: ...

    @abstractmethod
    def load_trainable_state(self, state: dict[str, dict[str, torch.Tensor]]) -> None: ...


class Loop:
    def __init__(self, settings: LoopSettings, out: Path, accelerator: Accelerator) -> None:
        self.settings, self.out, self.accelerator = settings, out, accelerator
        self._best: dict[str, dict[str, torch.Tensor]] | None = None

    def run(
        self,
        objective: Objective,
        stages: list[Stage],
        dev: list[Row],
        resume: bool,
        log: Callable[[str], None],
    ) -> Progress:
        progress = self._load_progress() if resume else Progress()
        for stage in stages:
            if stage.number < progress.stage or not stage.rows:
                continue
            self._run_stage(objective, stage, dev, progress, log)
            progress.stage, progress.step, progress.best_loss, progress.bad_evals = (
                stage.number + 1,
                0,
                math.inf,
                0,
            )
        if self._best is not None:
            objective.load_trainable_state(self._best)
        return progress

    def _run_stage(
        self,
        objective: Objective,
        stage: Stage,
        dev: list[Row],
        progress: Progress,
        log: Callable[[str], None],
    ) -> None:
        s = self.settings
        optimizer = torch.optim.AdamW(objective.param_groups(), weight_decay=0.0)
        steps_per_epoch = math.ceil(len(stage.rows) / (s.batch_size * s.gradient_accumulation))
        batches = epoch_batches(stage.rows, s.batch_size, s.seed + stage.number, math.ceil(stage.epochs))
        batches = batches[: max(1, int(steps_per_epoch * stage.epochs)) * s.gradient_accumulation]
        # With several processes each takes every n-th batch, so n processes share the epoch, not repeat it.
        batches = batches[self.accelerator.process_index :: self.accelerator.num_processes]
        total = max(1, len(batches) // s.gradient_accumulation)
        schedule = get_cosine_schedule_with_warmup(optimizer, int(s.warmup_ratio * total), total)
        *prepared, optimizer, schedule = self.accelerator.prepare(*objective.modules(), optimizer, schedule)
        started = time.perf_counter()
        if progress.step:  # resuming mid-stage
            self._restore_checkpoint(objective, optimizer, schedule)
        else:  # the starting point is a candidate too: steps are kept only if they beat it on dev
            objective.begin_stage(stage, log)
            self._judge(objective, stage, dev, progress, None, started, log)
        for module in prepared:
            module.train()
        for index in range(progress.step * s.gradient_accumulation, len(batches)):
            with self.accelerator.accumulate(prepared[0]):
                loss = objective.loss(prepared, batches[index], stage.target)
                self.accelerator.backward(loss)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad()
            if (index + 1) % s.gradient_accumulation:
                continue
            progress.step += 1
            if progress.step % s.eval_every == 0 or progress.step == total:
                self._judge(objective, stage, dev, progress, loss.item(), started, log)
                for module in prepared:
                    module.train()
                if progress.bad_evals >= s.patience:
                    best = progress.best_step
                    log(f"stage {stage.number}: early stop at step {progress.step} (best {best})")
                    return
            if progress.step % s.checkpoint_every == 0:
                self._checkpoint(objective, progress, optimizer, schedule)

    def _judge(
        self,
        objective: Objective,
        stage: Stage,
        dev: list[Row],
        progress: Progress,
        train_loss: float | None,
        started: float,
        log: Callable[[str], None],
    ) -> None:
        """Evaluate on dev, log, and keep the weights if they are the best of this stage so far."""
        dev_loss, dev_auroc = objective.evaluate(dev, stage.target)
        progress.history.append(
            {
                "stage": stage.number,
                "step": progress.step,
                "train_loss": train_loss,
                "dev_loss": dev_loss,
                "dev_auroc": dev_auroc,
            }
        )
        log(
            f"stage {stage.number} step {progress.step} ({time.perf_counter() - started:.0f} s): "
            f"train {'-' if train_loss is None else f'{train_loss:.4f}'} dev {dev_loss:.4f} "
            f"dev AUROC {dev_auroc:.3f}"
        )
        if dev_loss < progress.best_loss:
            progress.best_loss, progress.best_step, progress.bad_evals = dev_loss, progress.step, 0
            self._best = _copy(objective.trainable_state())
        else:
            progress.bad_evals += 1

    # Checkpoints: trainable weights, optimiser, schedule, progress and RNG; never the base model.

    def _checkpoint(self, objective: Objective, progress: Progress, optimizer: Any, schedule: Any) -> None:
        if not self.accelerator.is_main_process:
            return
        state = {
            "trainable": objective.trainable_state(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "progress": asdict(progress),
            "rng": torch.get_rng_state(),
        }
        partial = self.out / f"{CHECKPOINT}.partial"
        torch.save(state, partial)
        partial.replace(self.out / CHECKPOINT)  # an interrupt never leaves a torn checkpoint

    def _load_progress(self) -> Progress:
        path = self.out / CHECKPOINT
        if not path.is_file():
            return Progress()
        return Progress(**torch.load(path, weights_only=False)["progress"])

    def _restore_checkpoint(self, objective: Objective, optimizer: Any, schedule: Any) -> None:
        state = torch.load(self.out / CHECKPOINT, weights_only=False)
        objective.load_trainable_state(state["trainable"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["rng"])


def save_adapter(model: Any, base: str, out: Path) -> None:
    """The PEFT adapter, naming its base as the user did (not this machine's cache path), without PEFT's
    placeholder model card: the scorer's card is scorer.json."""
    model.peft_config["default"].base_model_name_or_path = base
    model.save_pretrained(str(out))
    (out / "README.md").unlink(missing_ok=True)


def batches_of(rows: list[Row], size: int) -> Iterator[list[Row]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def in_length_order(rows: list[Row], score: Callable[[list[Row]], np.ndarray], size: int = 32) -> np.ndarray:
    """`score` over batches of similar prompt length, results in the rows' order: one batch of thousands,
    or a shuffled one, would be padded to its longest reading passage."""
    order = sorted(range(len(rows)), key=lambda i: QARecord.of_label(rows[i]).prompt_chars)
    ranked = [rows[i] for i in order]
    scores = np.concatenate([score(ranked[i : i + size]) for i in range(0, len(ranked), size)])
    return scores[np.argsort(order)]


def epoch_batches(rows: list[Row], size: int, seed: int, epochs: int) -> list[list[Row]]:
    """Each epoch shuffled on its own and cut into batches, so every epoch has the same number of steps.

    Rows are grouped by length within windows of 32 batches before cutting: a batch costs as much as its
    longest prompt times its size, and one reading passage among short questions would multiply it.
    """
    batches: list[list[Row]] = []
    rng = random.Random(seed)
    window = 32 * size
    for _ in range(epochs):
        shuffled = list(rows)
        rng.shuffle(shuffled)
        epoch = [
            batch
            for start in range(0, len(shuffled), window)
            for batch in batches_of(
                sorted(shuffled[start : start + window], key=lambda r: QARecord.of_label(r).prompt_chars),
                size,
            )
        ]
        rng.shuffle(epoch)
        batches += epoch
    return batches


def _copy(state: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict[str, torch.Tensor]]:
    return {name: {k: v.detach().clone() for k, v in part.items()} for name, part in state.items()}
