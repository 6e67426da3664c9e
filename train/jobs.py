"""The train-scorer and eval-scorer jobs: read labels, split, train, calibrate, evaluate, write the folder."""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

import calibrators
from localmodel import LocalModel, Pooling
from scorers import ScoreItem, calibrate
from scorers.card import CALIBRATOR_FILE, ScorerCard, TargetCard
from scorers.head import HeadScorer, save_head
from scorers.intrinsic import IntrinsicScorer
from train.data import QARecord, prompt
from train.head import HeadSettings, HeadTrainer
from train.intrinsic import IntrinsicSettings, train_intrinsic
from train.loop import in_length_order, save_adapter
from train.probe import FrozenStates, LinearProbe, cross_fitted
from train.splits import RULE as SPLIT_RULE
from train.splits import split_rows
from train.targets import labelled_by, merged, targets_of

Row = dict[str, Any]


def read_labels(paths: list[Path]) -> list[Row]:
    """Every graded row; a row its grader could not grade (`correct: null`, e.g. a judge's unreadable
    verdict) says nothing about the answer, so it is left out."""
    rows: list[Row] = []
    for path in paths:
        for line_no, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            if "correct" not in row:
                raise ValueError(
                    f"{path}:{line_no}: correct: missing (is this a labels file from build-dataset?)"
                )
            if row["correct"] is not None:
                rows.append(row)
    return rows


@dataclass(frozen=True)
class LabelledData:
    per_file: dict[Path, list[Row]]
    targets: list[str]
    """The models that labelled the rows, the scorer's base model first."""
    splits: dict[str, list[Row]]
    """Merged rows (`train.targets`), by split."""
    held_out: frozenset[str]
    seed: int

    @classmethod
    def read(cls, label_files: list[Path], seed: int, held_out: frozenset[str], base: str) -> LabelledData:
        per_file = {path: read_labels([path]) for path in label_files}
        rows = [row for part in per_file.values() for row in part]
        questions = merged(rows, base)
        return cls(per_file, targets_of(rows, base), split_rows(questions, seed, held_out), held_out, seed)

    def provenance(self) -> dict[str, Any]:
        first = next((part[0] for part in self.per_file.values() if part), {})
        return {
            "labels": [{"file": str(path), "rows": len(part)} for path, part in self.per_file.items()],
            "rows_by_source_and_split": {
                name: dict(Counter(r["source"] for r in part)) for name, part in self.splits.items()
            },
            "held_out_sources": sorted(self.held_out),
            "split_rule": SPLIT_RULE,
            "seed": self.seed,
            "grading": first.get("grading"),
        }


def calibrator_file(index: int, model: str) -> str:
    """The primary's calibrator is calibrator.json, as in single-target folders (and `router calibrate`)."""
    return CALIBRATOR_FILE if index == 0 else f"calibrator.{re.sub(r'[^A-Za-z0-9._-]', '_', model)}.json"


def finish_scorer(
    out: Path,
    card: ScorerCard,
    raw: np.ndarray,
    data: LabelledData,
    training: dict[str, Any],
    log: Callable[[str], None],
) -> ScorerCard:
    """Fit each target's calibrator on the calibration rows it labelled (raw: rows x targets) and write the
    card with the targets and their provenance."""
    rows = data.splits["calibration"]
    targets, calibrations = [], {}
    for k, model in enumerate(data.targets):
        has = np.array([model in r["labels"] for r in rows], dtype=bool)
        labels = np.array([r["labels"][model] for r in rows if model in r["labels"]], dtype=float)
        calibrations[model] = {"method": "platt", "rows": len(labels), "positives": int(labels.sum())}
        name: str | None = calibrator_file(k, model)
        if 0 < labels.sum() < len(labels):
            calibrators.PlattScaling().fit(raw[has, k], labels).save(out / str(name))
        else:  # an uncalibrated scorer is still usable; the card says so
            calibrations[model]["method"], name = None, None
            log(f"{model}: no calibrator: {len(labels)} calibration rows, {int(labels.sum())} correct")
        trained = labelled_by(data.splits["train"], model)
        rate = float(np.mean([r["labels"][model] for r in trained])) if trained else None
        targets.append(TargetCard(model=model, calibrator=name, base_rate=rate, rows=len(trained)))
    primary = np.array([data.targets[0] in r["labels"] for r in rows], dtype=bool)
    card = ScorerCard.model_validate(
        {
            **card.model_dump(),
            "targets": [t.model_dump(exclude_none=True) for t in targets],
            # The drift monitor's default reference: the primary's raw scores on rows training never saw.
            "reference_scores": [round(float(x), 6) for x in raw[primary, 0]],
            "training": {**data.provenance(), **training, "calibration": calibrations},
        }
    )
    card.save(out)
    return card


def train_head_scorer(
    base: str,
    label_files: list[Path],
    out: Path,
    settings: HeadSettings,
    held_out: frozenset[str],
    resume: bool,
    log: Callable[[str], None],
) -> ScorerCard:
    started = time.perf_counter()
    data = LabelledData.read(label_files, settings.seed, held_out, base)
    log(f"targets: {', '.join(data.targets)}")
    trainer = HeadTrainer(base, settings, out, data.targets)
    out.mkdir(parents=True, exist_ok=True)
    layer_scores: dict[int, float] = {}
    layer = settings.layer
    if layer is None:
        layer, layer_scores = trainer.choose_layer(data.splits["train"], data.splits["dev"])
        log(f"layer {layer} chosen on dev (probe AUROC by layer: {layer_scores})")
    progress = trainer.train(data.splits["train"], data.splits["dev"], layer, resume, log)
    save_adapter(trainer.model, base, out)
    card = ScorerCard(
        method="head",
        base_model=base,
        layer=layer,
        pooling=settings.pooling,
        targets=[TargetCard(model=m) for m in data.targets],
    )
    save_head(out, trainer.head.weight, trainer.head.bias, card)
    # Calibration scores go through the path the server scores with, not the trainer's.
    scorer = HeadScorer(LocalModel(base), out)
    raw = in_length_order(data.splits["calibration"], lambda part: scorer.raw_scores(_items(part)))
    training = {
        "settings": asdict(settings),
        "layer_probe_auroc": layer_scores,
        "history": progress.history,
        "seconds": round(time.perf_counter() - started, 1),
    }
    return finish_scorer(out, card, raw, data, training, log)


def train_intrinsic_scorer(
    base: str,
    label_files: list[Path],
    out: Path,
    settings: IntrinsicSettings,
    held_out: frozenset[str],
    resume: bool,
    log: Callable[[str], None],
) -> ScorerCard:
    started = time.perf_counter()
    data = LabelledData.read(label_files, settings.seed, held_out, base)
    if len(data.targets) > 1:
        others = ", ".join(data.targets[1:])
        raise ValueError(
            f"an intrinsic scorer judges {base}'s own answers; labels from {others} do not apply"
        )
    card, progress = train_intrinsic(
        base, data.splits["train"], data.splits["dev"], out, settings, resume, log
    )
    scorer = IntrinsicScorer(LocalModel(base), out)
    raw = in_length_order(
        data.splits["calibration"],
        lambda part: scorer.raw_scores([i.messages for i in _items(part)], [r["greedy"] for r in part]),
    )[:, None]
    training = {
        "target": "digit = floor(10 * share of the greedy answer and its samples that were correct)",
        "settings": asdict(settings),
        "history": progress.history,
        "seconds": round(time.perf_counter() - started, 1),
    }
    return finish_scorer(out, card, raw, data, training, log)


def evaluate_scorer(
    adapter: Path,
    label_files: list[Path],
    out: Path,
    split: str,
    seed: int | None,
    sources: frozenset[str] = frozenset(),
    cross_fit: int = 0,
    target: str | None = None,
) -> dict[str, Any]:
    """Metrics with bootstrap intervals on one split (default: the test split the card's seed defines).

    Baselines: N-Prob and self-consistency on the rows that have them, and, when the rows come from a split,
    frozen linear probes fitted on the training split at the head's layer: `probe` on the last token's state
    (the issue's reference), and `probe_<pooling>` on what the head reads, if that differs (what the LoRA
    adds).
    `sources` narrows the judged rows (the probe still fits on every training row).
    `target`: the model whose answers are judged (default: the base model); rows other models labelled are
    left out.
    `cross_fit` > 1 adds `cross_fitted_probe`: the head's recipe (a frozen probe on what the head reads)
    judged on every row of the trained sources, each scored by a probe fitted on the other folds, next to
    N-Prob on the same rows. A 10% test split leaves too few positives per source to judge (TriviaQA's has
    16 of its 182).
    """
    card = ScorerCard.load(adapter)
    target = target or card.predicted(adapter)[0].model
    every = [r for r in read_labels(label_files) if (r.get("model") or card.base_model) == target]
    if not every:
        raise ValueError(f"no rows labelled by {target} in {', '.join(map(str, label_files))}")
    training = card.extra().get("training", {})
    splits = None
    rows = every
    if split != "all":
        held_out = frozenset(training.get("held_out_sources", []))
        splits = split_rows(every, seed if seed is not None else training.get("seed", 0), held_out)
        rows = splits[split]
    if sources:
        rows = [r for r in rows if r["source"] in sources]
    model = LocalModel(card.base_model)
    scorer = HeadScorer(model, adapter)
    if target not in scorer.targets:
        raise ValueError(f"{adapter} predicts {', '.join(scorer.targets)}, not {target}")
    confidences = target_confidences(scorer, rows)[target]
    labels = np.array([r["correct"] for r in rows], dtype=float)
    baselines = {
        name: np.array([r.get(name) for r in rows], dtype=float) for name in ("nprob", "consistency")
    }
    states = FrozenStates(model, scorer.layer)
    if splits is not None:
        baselines |= _probe_scores(states, scorer.pooling, splits["train"], rows)
    metrics: dict[str, Any] = {
        "split": split,
        "scorer": _summary(confidences, labels),
        "baselines": _compared(baselines, confidences, labels, np.ones(len(rows), dtype=bool)),
        "by_source": {},
    }
    for source in sorted({r["source"] for r in rows}):
        mask = np.array([r["source"] == source for r in rows])
        metrics["by_source"][source] = {"scorer": _summary(confidences[mask], labels[mask])} | _compared(
            baselines, confidences, labels, mask
        )
    if any(r.get("context_variant") for r in rows):
        metrics["context_variants"] = _by_context_variant(rows, confidences, labels)
    if cross_fit > 1:
        trained = [r for r in every if r["source"] not in training.get("held_out_sources", [])]
        metrics["cross_fitted_probe"] = _cross_fitted(states, scorer.pooling, trained, cross_fit)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    calibrators.write_report(out, confidences, labels, title=f"{adapter.name} on {split} ({len(rows)} rows)")
    return metrics


def _by_context_variant(rows: list[Row], confidences: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Per source, the scorer on each kind of passage row (`train.data.context_variants`), and how well its
    confidence tells a question asked with its own passage (positive) from one asked with another's, with
    the cut that tells them apart best (Youden's J: on dev rows, a guard's refuse threshold)."""
    out: dict[str, Any] = {}
    kinds = np.array([r.get("context_variant") for r in rows])
    for source in sorted({r["source"] for r in rows if r.get("context_variant")}):
        mine = np.array([r["source"] == source for r in rows])
        figures = {
            k: _summary(confidences[m], labels[m])
            for k in ("own", "other", "none")
            if (m := mine & (kinds == k)).any()
        }
        paired = mine & ((kinds == "own") | (kinds == "other"))
        own = (kinds[paired] == "own").astype(float)
        figures["own_vs_other"] = _summary(confidences[paired], own)
        if 0 < own.sum() < len(own):
            cut, j = calibrators.youden_threshold(confidences[paired], own)
            figures["own_vs_other"]["youden_threshold"] = {"value": cut, "j": j}
        out[source] = figures
    return out


def target_confidences(scorer: HeadScorer, rows: list[Row]) -> dict[str, np.ndarray]:
    """Every target's calibrated confidence on each row, from one forward pass per batch."""
    raw = in_length_order(rows, lambda part: scorer.raw_scores(_items(part)))
    return {t: calibrate(t, raw[:, k], scorer.calibrators) for k, t in enumerate(scorer.targets)}


def _items(rows: list[Row]) -> list[ScoreItem]:
    return [ScoreItem(prompt(QARecord.of_label(r))) for r in rows]


def _probe_scores(
    states: FrozenStates, pooling: Pooling, train: list[Row], rows: list[Row], fit_rows: int = 4000
) -> dict[str, np.ndarray]:
    fit = random.Random(0).sample(train, min(fit_rows, len(train)))
    y = np.array([r["correct"] for r in fit], dtype=float)
    inputs: dict[str, Pooling] = {"probe": "last"}  # the reference
    if pooling != "last":
        inputs[f"probe_{pooling}"] = pooling  # what the head reads: the gap to it is what the LoRA adds
    return {
        name: LinearProbe().fit(states(fit, input_), y).transform(states(rows, input_))
        for name, input_ in inputs.items()
    }


def _cross_fitted(states: FrozenStates, pooling: Pooling, rows: list[Row], folds: int) -> dict[str, Any]:
    scores = cross_fitted(states(rows, pooling), rows, folds)
    labels = np.array([r["correct"] for r in rows], dtype=float)
    nprob = {"nprob": np.array([r.get("nprob") for r in rows], dtype=float)}
    by_source = {}
    for source in sorted({r["source"] for r in rows}):
        mask = np.array([r["source"] == source for r in rows])
        by_source[source] = {"probe": _summary(scores[mask], labels[mask])} | _compared(
            nprob, scores, labels, mask
        )
    return {"folds": folds, "pooling": pooling, "by_source": by_source}


def _compared(
    baselines: dict[str, np.ndarray], confidences: np.ndarray, labels: np.ndarray, mask: np.ndarray
) -> dict[str, Any]:
    """Each baseline on the rows in `mask` that have it; where those are fewer, the scorer on them too."""
    result = {}
    for name, values in baselines.items():
        has = mask & ~np.isnan(values)
        if not has.any():
            continue
        result[name] = _summary(values[has], labels[has])
        if has.sum() < mask.sum():
            result[name]["scorer_on_these_rows"] = _summary(confidences[has], labels[has])
    return result


WANTED = ("accuracy", "auroc", "ece", "brier", "prr", "auprc", "adaptive_ece")


def _summary(confidences: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    summary: dict[str, Any] = {"n": len(labels), "positives": int(labels.sum())}
    for result in calibrators.evaluate(confidences, labels, n_resamples=500):
        if result.spec.key in WANTED:
            summary[result.spec.key] = result.estimate.to_dict() if result.estimate else None
    return summary
