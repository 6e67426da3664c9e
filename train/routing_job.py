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
from train.routing_eval import PER, routing_evaluation
from train.routing_report import write_report
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


def evaluate_routing_job(
    scorer_dir: Path,
    label_files: list[Path],
    out: Path,
    split: str = "test",
    costs: dict[str, float] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    labelled = read_labels(label_files)
    models, rows = matched_rows(labelled)
    card = ScorerCard.load(scorer_dir)
    training = card.extra().get("training", {})
    held_out = frozenset(training.get("held_out_sources", []))
    if split != "all":
        rows = split_rows(rows, training.get("seed", 0), held_out)[split]
    if not rows:
        raise ValueError(f"no question in the {split} split was labelled by all of {', '.join(models)}")
    scorer = HeadScorer(LocalModel(card.base_model), scorer_dir)
    unknown = [m for m in models if m not in scorer.targets]
    if unknown:
        raise ValueError(f"{scorer_dir} predicts {', '.join(scorer.targets)}, not {', '.join(unknown)}")
    price, priced = prices(labelled, models, costs or {})
    log(f"{len(rows)} questions labelled by {', '.join(models)} in the {split} split; scoring them")
    confidences = target_confidences(scorer, rows)
    # Rows carry the first file's model's N-Prob: a baseline only where that model is the cheapest.
    nprob = np.array([np.nan if r.get("nprob") is None else r["nprob"] for r in rows], dtype=float)
    if min(models, key=lambda m: price[m]) != models[0]:
        nprob[:] = np.nan
    judged = "every split" if split == "all" else f"split {split!r}"
    if split == "test":
        judged += f" (held-out sources {sorted(held_out)} whole, and the rest's test split)"
    notes = [
        f"scorer: {scorer_dir} ({scorer.version})",
        f"rows: questions every model labelled, matched by id; {judged}; seed {training.get('seed', 0)}",
        f"costs: {priced}",
        f"grading: {next((r['grading'] for r in labelled if r.get('grading')), '?')}",
    ]
    evaluation = routing_evaluation(
        {m: np.array([r["labels"][m] for r in rows]) for m in models},
        price,
        {m: confidences[m] for m in models},
        [r["source"] for r in rows],
        nprob=nprob if not np.isnan(nprob).all() else None,
        notes=notes,
        families=[QARecord.of_label(r).family for r in rows],
    )
    write_report(out, evaluation)
    return evaluation.metrics
