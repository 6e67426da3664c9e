"""A head scorer at reduced precision against fp32 on held-out rows: does the faster pass rank and calibrate
as well?

The rows are the test split of the label files the scorer was trained on, as its card records them (files,
seed, held-out sources: the split `router eval-scorer` judges). Both passes score the same rows on one model;
each target's calibrated confidences are judged on the rows that target labelled, with calibrators.auroc and
calibrators.ece, side by side. Goal: every AUROC and ECE within 0.005 of fp32's.

    python -m bench.scorer_quality [--scorer policies/scorers/smollm2-head] [--precision bf16]
        [--rows 300 (0: the whole split)] [--by-source] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

import calibrators
from localmodel import LocalModel
from scorers.card import ScorerCard
from scorers.head import HeadScorer
from train.jobs import LabelledData, target_confidences

SHIPPED = Path(__file__).parents[1] / "policies" / "scorers" / "smollm2-head"
GOAL = 0.005


def test_rows(card: ScorerCard) -> list[dict[str, Any]]:
    """The card's test split, one merged row per question (`labels`: model -> 0/1)."""
    training = card.extra()["training"]
    root = Path(__file__).parents[1]  # the card names the label files from the repository's root
    files = [root / entry["file"] for entry in training["labels"]]
    held_out = frozenset(training["held_out_sources"])
    return LabelledData.read(files, training["seed"], held_out, card.base_model).splits["test"]


def figures(confidences: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    return calibrators.auroc(confidences, labels), calibrators.ece(confidences, labels)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scorer", type=Path, default=SHIPPED)
    parser.add_argument("--precision", default="bf16", choices=["auto", "bf16"])
    parser.add_argument("--rows", type=int, default=300, help="A random sample of the test split; 0: all.")
    parser.add_argument("--by-source", action="store_true", help="Also each source's AUROC.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    card = ScorerCard.load(args.scorer)
    rows = test_rows(card)
    if args.rows and args.rows < len(rows):
        rows = random.Random(args.seed).sample(rows, args.rows)
    model = LocalModel(card.base_model)
    fp32, reduced = HeadScorer(model, args.scorer, "fp32"), HeadScorer(model, args.scorer, args.precision)
    if reduced.twin is None:
        raise SystemExit(f"precision {args.precision} builds no twin on this machine: nothing to compare")
    confidences = {}
    for name, scorer in (("fp32", fp32), (str(reduced.twin.dtype).removeprefix("torch."), reduced)):
        started = time.perf_counter()
        confidences[name] = target_confidences(scorer, rows)
        print(f"{name}: {len(rows)} test rows scored in {time.perf_counter() - started:.1f} s")
    (base, expected), (other, got) = confidences.items()
    worst = 0.0
    for target in fp32.targets:
        mask = np.array([target in r["labels"] for r in rows])
        labels = np.array([r["labels"][target] for r in rows if target in r["labels"]])
        a, b = figures(expected[target][mask], labels), figures(got[target][mask], labels)
        moved = np.abs(expected[target][mask] - got[target][mask])
        worst = max(worst, abs(a[0] - b[0]), abs(a[1] - b[1]))
        print(
            f"{target}: {mask.sum()} rows, {int(labels.sum())} right; AUROC {base} {a[0]:.4f} vs {other} "
            f"{b[0]:.4f} ({b[0] - a[0]:+.4f}); ECE {a[1]:.4f} vs {b[1]:.4f} ({b[1] - a[1]:+.4f}); "
            f"confidence moved by {moved.mean():.4f} on average, {moved.max():.4f} at most"
        )
        if args.by_source:
            sources = np.array([r["source"] for r in rows])[mask]
            for source in sorted(set(sources)):
                part = sources == source
                if 0 < labels[part].sum() < part.sum():
                    auroc = [calibrators.auroc(c[target][mask][part], labels[part]) for c in (expected, got)]
                    print(f"  {source}: {part.sum()} rows, AUROC {auroc[0]:.4f} vs {auroc[1]:.4f}")
    verdict = "within" if worst <= GOAL else "NOT within"
    print(f"headline: every AUROC and ECE {verdict} {GOAL} of fp32's (largest difference {worst:.4f})")


if __name__ == "__main__":
    main()
