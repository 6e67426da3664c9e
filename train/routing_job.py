"""The eval-routing job: each model's labels matched by question id, the scorer's confidence for every
model on those questions, the routing evaluation (train/routing_eval.py) on the judged split, and its report
(train/routing_report.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from localmodel import LocalModel
from scorers.card import ScorerCard
from scorers.head import HeadScorer
from train.data import QARecord
from train.jobs import read_labels, target_confidences
from train.routing_compare import PAIRED_RESAMPLES, ROLES, compare_evaluations
from train.routing_eval import PER, RESAMPLES, RoutingEvaluation, routing_evaluation
from train.routing_report import write_comparison, write_report
from train.splits import split_rows
from train.targets import merged, targets_of

Row = dict[str, Any]


def matched_rows(labelled: list[Row]) -> tuple[list[str], list[Row]]:
    """(models in order of appearance, questions every one of them labelled)."""
    if any("model" not in r for r in labelled):
        raise ValueError("rows without `model`: label with router build-dataset")
    models = targets_of(labelled, "")
    if len(models) < 2:
        raise ValueError(f"routing needs labels from at least two models; these files hold {models}")
    return models, [r for r in merged(labelled, "") if len(r["labels"]) == len(models)]


def prices(labelled: list[Row], models: list[str], given: dict[str, float]) -> tuple[dict[str, float], str]:
    """Dollars per request for each model, and how they were set (said in the report)."""
    if given:
        missing = [m for m in models if m not in given]
        if missing:
            raise ValueError(f"--cost names no price for {', '.join(missing)}")
        return {m: given[m] / PER for m in models}, "prices from --cost (dollars per 1,000 requests)"
    recorded = {m: [r.get("cost") for r in labelled if r["model"] == m] for m in models}
    if all(None not in costs for costs in recorded.values()):
        return {
            m: float(np.mean([float(x or 0) for x in c])) for m, c in recorded.items()
        }, "mean recorded cost per row"
    # No prices: the files' order is the price order, one unit per 1,000 requests more for each.
    return {
        m: i / PER for i, m in enumerate(models)
    }, "none given: the labels files cheapest first, 1 unit apart"


def judged_rows(rows: list[Row], trainings: list[dict[str, Any]], split: str) -> list[Row]:
    """The rows in `split` under every scorer's training split (seed and held-out sources from each card's
    `training`), in their order. For the test split: no row that any of the scorers trained, tuned or
    calibrated on. `all`: every row."""
    if split == "all":
        return rows
    chosen = [
        {id(r) for r in split_rows(rows, t.get("seed", 0), frozenset(t.get("held_out_sources", [])))[split]}
        for t in trainings
    ]
    return [r for r in rows if all(id(r) in ids for ids in chosen)]


def evaluate_routing_job(
    scorer_dir: Path,
    label_files: list[Path],
    out: Path,
    split: str = "test",
    costs: dict[str, float] | None = None,
    log: Callable[[str], None] = print,
    n_resamples: int | None = None,
) -> dict[str, Any]:
    """`n_resamples`: for every bootstrap interval (default: routing_evaluation's)."""
    labelled = read_labels(label_files)
    models, rows = matched_rows(labelled)
    card = ScorerCard.load(scorer_dir)
    training = card.extra().get("training", {})
    rows = _nonempty(judged_rows(rows, [training], split), models, split)
    [scorer] = _scorers([scorer_dir], [card], models)
    price, priced = prices(labelled, models, costs or {})
    log(f"{len(rows)} questions labelled by {', '.join(models)} in the {split} split; scoring them")
    judged = "every split" if split == "all" else f"split {split!r}"
    if split == "test":
        held_out = sorted(training.get("held_out_sources", []))
        judged += f" (held-out sources {held_out} whole, and the rest's test split)"
    notes = [
        f"scorer: {scorer_dir} ({scorer.version})",
        f"rows: questions every model labelled, matched by id; {judged}; seed {training.get('seed', 0)}",
        f"costs: {priced}",
        f"grading: {_grading(labelled)}",
    ]
    evaluation = _evaluation(rows, models, price, target_confidences(scorer, rows), notes, n_resamples)
    write_report(out, evaluation)
    return evaluation.metrics


def compare_routing_job(
    current_dir: Path,
    candidate_dir: Path,
    label_files: list[Path],
    out: Path,
    split: str = "test",
    costs: dict[str, float] | None = None,
    log: Callable[[str], None] = print,
    n_resamples: int | None = None,
) -> dict[str, Any]:
    """Both scorers on the rows held out for both (`judged_rows`), each one's report in out/current and
    out/candidate, and the paired comparison (train/routing_compare.py) in out. `n_resamples`: for every
    bootstrap (default: the paired one's PAIRED_RESAMPLES, routing_evaluation's for the reports)."""
    labelled = read_labels(label_files)
    models, rows = matched_rows(labelled)
    dirs = [current_dir, candidate_dir]
    cards = [ScorerCard.load(d) for d in dirs]
    trainings = [card.extra().get("training", {}) for card in cards]
    rows = _nonempty(judged_rows(rows, trainings, split), models, split)
    scorers = _scorers(dirs, cards, models)
    price, priced = prices(labelled, models, costs or {})
    log(f"{len(rows)} questions labelled by {', '.join(models)} in the {split} split of both; scoring them")
    judged = "every split" if split == "all" else f"split {split!r} of both scorers"
    if split == "test":
        judged += (
            " (each one's held-out sources and test split: no row either trained, tuned or calibrated on)"
        )
    seeds = ", ".join(str(t.get("seed", 0)) for t in trainings)
    shared = [
        f"rows: questions every model labelled, matched by id; {judged}; seeds {seeds}",
        f"costs: {priced}",
        f"grading: {_grading(labelled)}",
    ]
    same = scorers[1].version == scorers[0].version and cards[1].base_model == cards[0].base_model
    current = target_confidences(scorers[0], rows)
    # The same files on the same model score alike: scored once.
    scored = [current, current if same else target_confidences(scorers[1], rows)]
    evaluations = []
    for role, folder, scorer, confidences in zip(ROLES, dirs, scorers, scored, strict=True):
        notes = [f"scorer: {folder} ({scorer.version})", *shared]
        evaluations.append(_evaluation(rows, models, price, confidences, notes, n_resamples))
        write_report(out / role, evaluations[-1])
    notes = [f"{role}: {d} ({s.version})" for role, d, s in zip(ROLES, dirs, scorers, strict=True)]
    current_evaluation, candidate_evaluation = evaluations
    comparison = compare_evaluations(
        current_evaluation,
        candidate_evaluation,
        n_resamples=PAIRED_RESAMPLES if n_resamples is None else n_resamples,
        notes=notes + shared,
    )
    write_comparison(out, comparison)
    return comparison


def _nonempty(rows: list[Row], models: list[str], split: str) -> list[Row]:
    if not rows:
        raise ValueError(f"no question in the {split} split was labelled by all of {', '.join(models)}")
    return rows


def _scorers(dirs: list[Path], cards: list[ScorerCard], models: list[str]) -> list[HeadScorer]:
    """One head scorer per folder, those on the same base model sharing it (each under its own adapter)."""
    loaded: dict[str, LocalModel] = {}
    scorers = []
    for folder, card in zip(dirs, cards, strict=True):
        if card.base_model not in loaded:
            loaded[card.base_model] = LocalModel(card.base_model)
        scorer = HeadScorer(loaded[card.base_model], folder)
        unknown = [m for m in models if m not in scorer.targets]
        if unknown:
            raise ValueError(f"{folder} predicts {', '.join(scorer.targets)}, not {', '.join(unknown)}")
        scorers.append(scorer)
    return scorers


def _grading(labelled: list[Row]) -> str:
    return str(next((r["grading"] for r in labelled if r.get("grading")), "?"))


def _evaluation(
    rows: list[Row],
    models: list[str],
    price: dict[str, float],
    confidences: dict[str, np.ndarray],
    notes: list[str],
    n_resamples: int | None,
) -> RoutingEvaluation:
    # Rows carry the first file's model's N-Prob: a baseline only where that model is the cheapest.
    nprob = np.array([np.nan if r.get("nprob") is None else r["nprob"] for r in rows], dtype=float)
    if min(models, key=lambda m: price[m]) != models[0]:
        nprob[:] = np.nan
    return routing_evaluation(
        {m: np.array([r["labels"][m] for r in rows]) for m in models},
        price,
        {m: confidences[m] for m in models},
        [r["source"] for r in rows],
        nprob=nprob if not np.isnan(nprob).all() else None,
        notes=notes,
        families=[QARecord.of_label(r).family for r in rows],
        n_resamples=RESAMPLES if n_resamples is None else n_resamples,
    )
