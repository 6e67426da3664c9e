"""Certainty heads of one task family each, for a family the jointly trained heads rank poorly.

The joint heads are fitted on every family's rows at once; where a family's rows are few (IFEval's 400
against 11,000 closed-book questions) they rank its requests by what they learnt from the others. A family
head is a frozen linear probe (`train.probe.LinearProbe`) fitted on that family's rows alone, on the
scorer's own states (through its adapter), and read where the task head takes a request for that family:
the same forward pass, one more dot product.

Everything is chosen on the rows it may read, the family's train, dev and calibration rows under the
scorer's split rule; test rows are never read. The layer (every fifth up to the scorer's) and the probe's
strength C are chosen by five-fold cross-validated AUROC; a Platt calibrator is fitted on the chosen
setting's out-of-fold scores. Both are then folded, with the inverse of the model's own calibrator, into
the head's weight and bias, so that its output is on the model's raw scale: the one calibration the router
applies to a model's raw score gives the family's calibrated probability, and caches, budgets and drift
see one scale per model. A family needs `min_positives` right answers among those rows for a head.

The recipe is judged one level up, nested: each of five folds of the family's rows, test rows included, is
scored by a head chosen and fitted on the other four exactly as above (`judge`); rows of the scorer's
held-out sources are never fitted on, and are judged apart as well.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import calibrators
from calibrators import Calibrator, PlattScaling, TemperatureScaling
from localmodel import LocalModel
from policies.facts import TASK_FAMILIES
from scorers.card import FamilyHeadCard, ScorerCard
from scorers.head import HeadScorer
from train.add_target import file_stem, row_states
from train.data import QARecord
from train.jobs import read_labels
from train.probe import LinearProbe, fold_of
from train.splits import split_rows
from train.states_cache import StatesCache

Row = dict[str, Any]
C_GRID = (1e-4, 3e-4, 1e-3, 3e-3)
"""The probe's inverse L2 strength on standardised states (LinearProbe's default is 3e-4)."""
LAYER_STEP = 5
FOLDS = 5
MIN_POSITIVES = 30
"""Fewer right answers than this leave the family to the joint heads: the AUROC a choice rests on is noise."""


@dataclass(frozen=True)
class FamilyHead:
    """A family's probe and its calibration, before they are folded onto a model's raw scale."""

    layer: int
    c: float
    cv_auroc: float
    probe: LinearProbe
    platt: PlattScaling

    def probability(self, states: dict[int, np.ndarray]) -> np.ndarray:
        return self.platt.transform(self.probe.transform(states[self.layer]))


def train_family_heads(
    folder: Path,
    label_files: list[Path],
    min_positives: int = MIN_POSITIVES,
    cache: Path | None = None,
    log: Callable[[str], None] = print,
    families: frozenset[str] = frozenset(),
) -> list[dict[str, Any]]:
    """Fit a head for every (model, family) of the labels with enough right answers (of `families` only,
    where given), and write them into the scorer in `folder` (replacing the family heads it had; the other
    heads are left as they are). Returns each head's report, the nested judgement included."""
    unknown = families - set(TASK_FAMILIES)
    if unknown:
        raise ValueError(
            f"unknown task families: {', '.join(sorted(unknown))} (known: {', '.join(TASK_FAMILIES)})"
        )
    card = ScorerCard.load(folder)
    if card.task_head is None:
        raise ValueError(f"{folder}: no task head (router train-task-head): nothing would read a family head")
    scorer = HeadScorer(LocalModel(card.base_model), folder)
    states = StatesCache(scorer, cache)
    layers = sorted({*range(LAYER_STEP, scorer.layer, LAYER_STEP), scorer.layer})
    training = card.extra().get("training", {})
    seed, held_out = training.get("seed", 0), frozenset(training.get("held_out_sources", []))
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in read_labels(label_files):
        model, task = row.get("model") or card.base_model, QARecord.of_label(row).family
        if model in scorer.targets and task in scorer.tasks and (not families or task in families):
            groups.setdefault((model, task), []).append(row)
    fitted: list[tuple[FamilyHeadCard, np.ndarray, float]] = []
    reports = []
    for (model, family), rows in sorted(groups.items()):
        tested = {r["id"] for r in split_rows(rows, seed, held_out)["test"]}
        readable = np.array([r["id"] not in tested for r in rows])
        y, ids = _labels(rows), [r["id"] for r in rows]
        positives = int(y[readable].sum())
        if positives < min_positives or positives == readable.sum():
            log(
                f"{model} / {family}: {positives} right of {readable.sum()} readable rows: "
                "left to the joint heads"
            )
            continue
        x = row_states(states, rows, layers)
        kept = [i for i, r in zip(ids, readable, strict=True) if r]
        head = fit({k: v[readable] for k, v in x.items()}, y[readable], kept)
        weight, bias = on_raw_scale(head, scorer.calibrators.get(model))
        unseen = np.array([r["source"] in held_out for r in rows])
        nested = judge(x, y, ids, unseen)
        report: dict[str, Any] = {
            "c": head.c,
            "cv_auroc": round(head.cv_auroc, 4),
            "rows": int(readable.sum()),
        }
        report |= {"positives": positives, "nested": nested}
        name = f"head.{file_stem(model)}.{family}.safetensors"
        fitted.append(
            (FamilyHeadCard(model=model, family=family, head=name, layer=head.layer, **report), weight, bias)
        )
        reports.append({"model": model, "family": family, "layer": head.layer, **report})
        log(
            f"{model} / {family}: layer {head.layer}, C {head.c:g} (cross-validated AUROC "
            f"{head.cv_auroc:.3f});"
            f" nested over {nested['n']} rows ({nested['positives']} right): AUROC {nested['auroc']:.3f},"
            f" ECE {nested['ece']:.3f}"
        )
    _write(folder, card, fitted)
    return reports


def fit(x: dict[int, np.ndarray], y: np.ndarray, ids: list[str], salt: str = "") -> FamilyHead:
    """The layer and C of the best cross-validated AUROC on these rows, the probe fitted on them all, and a
    Platt calibrator on its out-of-fold scores. `salt` draws other folds (a fit inside an outer fold)."""
    folds = np.array([fold_of(f"{salt}{i}", FOLDS) for i in ids])
    best: tuple[float, int, float, np.ndarray] | None = None
    for layer in sorted(x):
        for c in C_GRID:
            scores = out_of_fold(x[layer], y, folds, c)
            auroc = calibrators.auroc(scores, y)
            if best is None or auroc > best[0]:
                best = (auroc, layer, c, scores)
    assert best is not None
    auroc, layer, c, scores = best
    probe = LinearProbe(c).fit(x[layer], y)
    return FamilyHead(layer, c, auroc, probe, PlattScaling().fit(scores, y))


def out_of_fold(x: np.ndarray, y: np.ndarray, folds: np.ndarray, c: float) -> np.ndarray:
    """Each row's score from a probe fitted on the other folds."""
    scores = np.full(len(y), np.nan)
    for fold in np.unique(folds):
        judged = folds == fold
        scores[judged] = LinearProbe(c).fit(x[~judged], y[~judged]).transform(x[judged])
    return scores


def judge(
    x: dict[int, np.ndarray], y: np.ndarray, ids: list[str], unseen: np.ndarray | None = None
) -> dict[str, Any]:
    """AUROC and ECE of `nested_scores`, over every row and, where there are any, over the unseen rows."""
    unseen = np.zeros(len(y), dtype=bool) if unseen is None else unseen
    scores = nested_scores(x, y, ids, unseen)
    figures = _figures(scores, y)
    if unseen.any():
        figures["held_out_sources"] = _figures(scores[unseen], y[unseen])
    return figures


def nested_scores(x: dict[int, np.ndarray], y: np.ndarray, ids: list[str], unseen: np.ndarray) -> np.ndarray:
    """Each row scored by a head chosen and fitted without its fold. Rows of held-out sources (`unseen`) are
    never fitted on: each is scored by a head chosen and fitted on all the other rows."""
    folds = np.where(unseen, -1, [fold_of(i, FOLDS) for i in ids])
    scores = np.full(len(y), np.nan)
    for fold in range(-1 if unseen.any() else 0, FOLDS):
        judged = folds == fold
        fitted = ~judged & ~unseen
        kept = [i for i, f in zip(ids, fitted, strict=True) if f]
        head = fit({k: v[fitted] for k, v in x.items()}, y[fitted], kept, salt="inner:")
        scores[judged] = head.probability({k: v[judged] for k, v in x.items()})
    return scores


def _figures(scores: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    figures: dict[str, Any] = {"n": len(y), "positives": int(y.sum())}
    for name, metric in (("auroc", calibrators.auroc), ("ece", calibrators.ece)):
        estimate = calibrators.bootstrap(metric, scores, y, n_resamples=1000, seed=0)
        figures[name] = round(estimate.value, 4)
        figures[f"{name}_interval"] = [round(estimate.low, 4), round(estimate.high, 4)]
    return figures


def on_raw_scale(head: FamilyHead, calibrator: Calibrator | None) -> tuple[np.ndarray, float]:
    """The head's weight and bias such that `calibrator(sigmoid(states @ weight + bias))` is the head's
    calibrated probability: its probe's logit through its Platt map, then through the inverse of the
    model's calibrator (a Platt or temperature map on probabilities, or none). Exact while that raw logit
    stays inside the calibrators' clip (|logit| < 16, calibrators.base.LOGIT_EPS)."""
    logit_w = head.platt.slope * head.probe.weights
    logit_b = head.platt.slope * head.probe.bias + head.platt.intercept
    if calibrator is None:
        return logit_w, logit_b
    if calibrator.input_kind != "probability":
        raise ValueError("a family head needs its model's calibrator to read probabilities")
    if isinstance(calibrator, PlattScaling) and calibrator.slope > 0:
        return logit_w / calibrator.slope, (logit_b - calibrator.intercept) / calibrator.slope
    if isinstance(calibrator, TemperatureScaling):
        return logit_w * calibrator.temperature, logit_b * calibrator.temperature
    raise ValueError(
        f"a family head needs its model's calibrator to be invertible (platt with a slope, temperature); "
        f"got {type(calibrator).__name__}"
    )


def _labels(rows: list[Row]) -> np.ndarray:
    return np.array([bool(r["correct"]) for r in rows], dtype=float)


def _write(folder: Path, card: ScorerCard, fitted: list[tuple[FamilyHeadCard, np.ndarray, float]]) -> None:
    """The heads' files, then the card naming them; the files of heads no longer named go last."""
    import torch
    from safetensors.torch import save_file

    for head, weight, bias in fitted:
        partial = folder / f".{head.head}.partial"
        tensors = {
            "weight": torch.from_numpy(weight).float().reshape(1, -1),
            "bias": torch.tensor([bias]).float(),
        }
        save_file(tensors, str(partial))
        partial.replace(folder / head.head)
    gone = {h.head for h in card.family_heads} - {h.head for h, _, _ in fitted}
    card.family_heads = [head for head, _, _ in fitted]
    card.save(folder)
    for name in gone:
        (folder / name).unlink(missing_ok=True)
