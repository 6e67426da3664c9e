"""The two thresholds of a `pick` policy (policies/examples/two-models.yaml), chosen on development rows:

- `min_confidence`: the smallest threshold, in steps of 0.01, at which "the cheapest target whose confidence
  reaches it, else the most likely" is at least 95% as accurate as always asking the most accurate target;
- the refuse cut: the largest of 0.01, 0.02, 0.03 and 0.05 below which the most likely target's confidence
  falls on no question that some target answered right.

    python -m train.pick_thresholds --scorer policies/scorers/smollm2-head --labels A.jsonl --labels B.jsonl
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from calibrators.cost_quality import threshold_choice
from localmodel import LocalModel
from scorers.card import ScorerCard
from scorers.head import HeadScorer
from train.jobs import read_labels, target_confidences
from train.routing_job import judged_rows, matched_rows

SHARE_OF_BEST = 0.95
REFUSE_CUTS = (0.01, 0.02, 0.03, 0.05)


def pick_thresholds(correct: np.ndarray, confidences: np.ndarray) -> dict[str, Any]:
    """`correct` and `confidences`: one row per question, one column per target, cheapest first."""
    accuracy = correct.mean(axis=0)
    goal = SHARE_OF_BEST * accuracy.max()
    rows = np.arange(len(correct))
    chosen = None
    for t in np.round(np.arange(0.0, 1.001, 0.01), 2):
        choice = threshold_choice(confidences, float(t))
        if correct[rows, choice].mean() >= goal:
            chosen = {
                "min_confidence": float(t),
                "accuracy": float(correct[rows, choice].mean()),
                "share": (np.bincount(choice, minlength=correct.shape[1]) / len(choice)).tolist(),
            }
            break
    best = confidences.max(axis=1)
    anyone_right = correct.max(axis=1) == 1
    safe = [c for c in REFUSE_CUTS if not (anyone_right & (best < c)).any()]
    cut = max(safe) if safe else None
    return {
        "rows": len(correct),
        "right": correct.sum(axis=0).tolist(),
        "always_best_accuracy": float(accuracy.max()),
        "pick": chosen,
        "refuse_below": cut,
        "refused_share": None if cut is None else float((best < cut).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scorer", type=Path, required=True)
    parser.add_argument("--labels", type=Path, action="append", required=True)
    args = parser.parse_args()
    models, rows = matched_rows(read_labels(args.labels))
    card = ScorerCard.load(args.scorer)
    rows = judged_rows(rows, [card.extra().get("training", {})], "dev")
    scorer = HeadScorer(LocalModel(card.base_model), args.scorer)
    confidences = target_confidences(scorer, rows)
    figures = pick_thresholds(
        np.array([[r["labels"][m] for m in models] for r in rows], dtype=float),
        np.column_stack([confidences[m] for m in models]),
    )
    print({"targets": models, **figures})


if __name__ == "__main__":
    main()
