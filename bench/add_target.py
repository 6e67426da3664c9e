"""A new model's head without retraining (`router add-target`), against the full retrain's head for it.

1. Wall time of `router add-target` for 1,000 training rows as a user runs it: a fresh process, an empty
   states cache (the forward passes over the training, dev and calibration rows included).
2. The learning curve: the added head's AUROC on the new model's held-out test rows with 100, 300, 1,000
   and all training rows, each against the full retrain's head on the same rows (a paired bootstrap of
   the difference).

The start is a scorer that never saw the new model (e.g. the SmolLM2-only scorer of commit 154aabd); the
reference is one trained on both models from scratch (the shipped policies/scorers/smollm2-head). Both
must split the labels by the same rule, so that the test rows are the same questions.

    git archive 154aabd policies/scorers/smollm2-head | tar -x -C /tmp/start
    python -m bench.add_target --start /tmp/start/policies/scorers/smollm2-head \\
        --reference policies/scorers/smollm2-head --labels train/labels/gemma-3-270m.jsonl
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.torch import load_file

from calibrators import auroc, bootstrap
from localmodel import LocalModel
from scorers.card import ScorerCard
from scorers.head import HeadScorer
from train.add_target import add_target, row_states
from train.jobs import read_labels, target_confidences
from train.splits import split_rows
from train.states_cache import StatesCache

Row = dict[str, object]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", type=Path, required=True)
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--labels", type=Path, required=True)
    parser.add_argument("--rows", default="100,300,1000,all")
    args = parser.parse_args()
    start, reference = ScorerCard.load(args.start), ScorerCard.load(args.reference)
    rule = [
        (c.extra()["training"]["seed"], c.extra()["training"]["held_out_sources"]) for c in (start, reference)
    ]
    if rule[0] != rule[1]:
        sys.exit(f"the scorers split by different rules: {rule}")
    rows = read_labels([args.labels])
    model = str(rows[0]["model"])
    test = split_rows(rows, rule[0][0], frozenset(rule[0][1]))["test"]
    labels = np.array([r["correct"] for r in test], dtype=float)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        seconds = timed_cli(args, work, 1000)
        print(f"router add-target, 1,000 training rows, fresh process and empty cache: {seconds:.1f} s")
        full = target_confidences(HeadScorer(LocalModel(reference.base_model), args.reference), test)[model]
        print(
            f"full retrain's {model} head on {len(test)} test rows ({int(labels.sum())} right): "
            f"AUROC {bootstrap(auroc, full, labels)}"
        )
        cache = work / "states.npz"
        headline = ""
        for size in args.rows.split(","):
            out = work / f"added-{size}"
            report = add_target(
                args.start,
                [args.labels],
                out,
                model,
                None if size == "all" else int(size),
                cache=cache,
                log=lambda _: None,
            )
            added = head_on(out, model, test, cache)
            gap = bootstrap(lambda a, y, b: auroc(a, y) - auroc(b, y), added, labels, full)
            ours, theirs = auroc(added, labels), auroc(full, labels)
            line = (
                f"{report['rows']['train']} rows: added head AUROC {ours:.3f}, "
                f"full retrain {theirs:.3f}, ratio {ours / theirs:.3f}"
            )
            line = f"{line}; difference {gap}; layer {report['layer']}; fit {report['seconds']} s"
            print(line)
            headline = line if size == "1000" or not headline else headline
    print(f"add-target 1,000 rows {seconds:.0f} s (goal 300 s); at {headline}")


def timed_cli(args: argparse.Namespace, work: Path, rows: int) -> float:
    begun = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "router",
            "add-target",
            "--scorer",
            str(args.start),
            "--labels",
            str(args.labels),
            "--out",
            str(work / "timed"),
            "--train-rows",
            str(rows),
            "--states-cache",
            str(work / "timed.npz"),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - begun


def head_on(folder: Path, model: str, rows: list[Row], cache: Path) -> np.ndarray:
    """The added head's raw scores on `rows`, from the states the cache holds (the scorer computes the same:
    tests/test_add_target.py pins it); ranking, so the calibrator does not change the AUROC."""
    card = ScorerCard.load(folder)
    target = next(t for t in card.targets if t.model == model)
    assert target.head and target.layer
    head = load_file(str(folder / target.head))
    states = StatesCache(HeadScorer(LocalModel(card.base_model), folder), cache)
    x = row_states(states, rows, [target.layer])[target.layer]
    return 1 / (1 + np.exp(-(x @ head["weight"][0].double().numpy() + float(head["bias"][0]))))


if __name__ == "__main__":
    main()
