"""The kind-of-request head: which task family a request is, read off the scorer's own prompt states.

A softmax over task families on the pooled states the certainty heads read (the same layer, pooling and
adapter), so it costs one small matrix product on the forward pass the scorer runs anyway. It is fitted on
the scorer as it is, the adapter frozen, so adding it leaves every certainty head bit-identical.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from localmodel import LocalModel, Message
from policies.facts import TASK_FAMILIES
from scorers.card import ScorerCard, TaskHeadCard
from scorers.head import HeadScorer
from train.data import QARecord, prompt
from train.splits import RULE, split_of
from train.states_cache import StatesCache

C_GRID = (0.003, 0.01, 0.03, 0.1, 0.3)
"""scikit-learn's inverse L2 strength on standardised states, chosen on dev rows."""
BRIEF_FAMILIES = frozenset({"qa", "choice", "passage"})
"""Families the labels ask with a brevity cue ("Answer in a few words.") that clients do not write."""


def as_sent(record: QARecord) -> list[Message]:
    """The request as a client would send it. Short-answer, choice and passage questions go half the time as
    the labels asked them (with a brevity cue) and half the time bare, a hash of the id deciding: the head
    must learn the question, not the cue."""
    if record.family not in BRIEF_FAMILIES or _coin(record.id):
        return prompt(record)
    parts = [record.context or "", record.question]
    if record.choices and not all(len(c) == 1 for c in record.choices):
        parts += [f"{letter}. {choice}" for letter, choice in zip("ABCDEFGHIJ", record.choices, strict=False)]
    return [{"role": "user", "content": "\n".join(p for p in parts if p)}]


def _coin(row_id: str) -> bool:
    return int(hashlib.sha256(f"cue:{row_id}".encode()).hexdigest()[:8], 16) % 2 == 0


def sampled(records: list[QARecord], per_source: int, seed: int) -> list[QARecord]:
    """At most `per_source` records of each source (a seeded shuffle): no source outvotes a family."""
    by_source: dict[str, list[QARecord]] = defaultdict(list)
    for record in records:
        by_source[record.source].append(record)
    kept: list[QARecord] = []
    for source, group in sorted(by_source.items()):
        order = sorted(group, key=lambda r: r.id)
        random.Random(f"{seed}:{source}").shuffle(order)
        kept += order[:per_source]
    return kept


@dataclass(frozen=True)
class Split:
    train: list[QARecord]
    dev: list[QARecord]
    test: list[QARecord]


def split(records: list[QARecord], seed: int, held_out: frozenset[str]) -> Split:
    """The scorers' split rule (train/splits.py); calibration rows are not needed and join none."""
    parts: dict[str, list[QARecord]] = defaultdict(list)
    for record in records:
        part = "test" if record.source in held_out else split_of(record.variant_of or record.id, seed)
        parts[part].append(record)
    return Split(parts["train"], parts["dev"], parts["test"])


class TaskHeadFitter:
    def __init__(self, scorer: HeadScorer, cache: Path | None = None) -> None:
        """`cache`: an .npz of prompt states (`train.states_cache`), read and extended, so that a refit
        (other sources, another sample) computes only the states it has not seen."""
        self.scorer, self.cached = scorer, StatesCache(scorer, cache)

    def states(self, records: list[QARecord]) -> np.ndarray:
        """The pooled states the scorer's heads read, as a client would send each request."""
        return self.cached([as_sent(r) for r in records], [self.scorer.layer])[self.scorer.layer]

    def fit(self, data: Split) -> TaskHead:
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import balanced_accuracy_score
        from sklearn.preprocessing import StandardScaler

        families = [f for f in TASK_FAMILIES if any(r.family == f for r in data.train)]
        x_train, y_train = self.states(data.train), _labels(data.train, families)
        x_dev, y_dev = self.states(data.dev), _labels(data.dev, families)
        scaler = StandardScaler().fit(x_train)
        fitted, on_dev = {}, {}
        for c in C_GRID:
            model = LogisticRegression(C=c, class_weight="balanced", max_iter=3000)
            fitted[c] = model.fit(scaler.transform(x_train), y_train)
            # The mean of each family's accuracy: a family's share of the rows does not weigh on it.
            on_dev[c] = float(balanced_accuracy_score(y_dev, model.predict(scaler.transform(x_dev))))
        c = max(C_GRID, key=lambda value: (on_dev[value], -value))  # ties: the stronger regularisation
        # Standardisation folded in, so the head applies to raw states as the certainty heads do.
        coef, intercept, scale = fitted[c].coef_, fitted[c].intercept_, np.asarray(scaler.scale_)
        # scikit-learn fits two classes with one row (the second's logit over the first's): split it in two.
        if len(families) == 2:
            coef, intercept = np.vstack([-coef, coef]) / 2, np.concatenate([-intercept, intercept]) / 2
        weight = coef / scale
        bias = intercept - (coef * scaler.mean_ / scale).sum(axis=1)
        return TaskHead(families, weight, bias, c, on_dev)


def _labels(records: list[QARecord], families: list[str]) -> np.ndarray:
    return np.array([families.index(r.family) if r.family in families else -1 for r in records])


@dataclass
class TaskHead:
    families: list[str]
    weight: np.ndarray
    """families x state features"""
    bias: np.ndarray
    c: float
    dev_balanced_accuracy: dict[float, float]

    def predict(self, states: np.ndarray) -> np.ndarray:
        """The likeliest family's index per row."""
        return np.argmax(states @ self.weight.T + self.bias, axis=1)

    def save(self, folder: Path, card: ScorerCard, report: dict[str, Any]) -> None:
        """Beside the certainty heads; the card names it (the scorer's version changes with it)."""
        import torch
        from safetensors.torch import save_file

        head = TaskHeadCard(families=self.families, **report)
        partial = folder / f".{head.file}.partial"
        tensors = {"weight": self.weight, "bias": self.bias}
        save_file(
            {k: torch.from_numpy(np.ascontiguousarray(v)).float() for k, v in tensors.items()}, str(partial)
        )
        partial.replace(folder / head.file)
        card.task_head = head
        card.save(folder)


def accuracy_by(records: list[QARecord], guessed: list[str], key: str) -> dict[str, dict[str, Any]]:
    """Per family (or source): rows, those whose family was guessed right, and the share with its 95% Wilson
    interval; and which families the misses were taken for."""
    groups: dict[str, list[tuple[QARecord, str]]] = defaultdict(list)
    for record, guess in zip(records, guessed, strict=True):
        groups[getattr(record, key)].append((record, guess))
    report = {}
    for name, pairs in sorted(groups.items()):
        right = sum(r.family == g for r, g in pairs)
        missed = Counter(g for r, g in pairs if r.family != g)
        report[name] = {
            "n": len(pairs),
            "correct": right,
            "accuracy": round(right / len(pairs), 4),
            "interval": [round(v, 4) for v in wilson(right, len(pairs))],
            "taken_for": dict(missed.most_common()),
        }
    return report


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    share = successes / n
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def train_task_head(
    folder: Path,
    records: list[QARecord],
    held_out: frozenset[str],
    per_source: int,
    seed: int,
    cache: Path | None = None,
) -> dict[str, Any]:
    """Fit the task head of the scorer in `folder` on `records`' families, judge it on the test rows (the
    held-out sources' and the others' test split), and write it into the folder. Returns the report."""
    card = ScorerCard.load(folder)
    fitter = TaskHeadFitter(HeadScorer(LocalModel(card.base_model), folder), cache)
    data = split(sampled(records, per_source, seed), seed, held_out)
    head = fitter.fit(data)
    guessed = [head.families[i] for i in head.predict(fitter.states(data.test))]
    report = {
        "c": head.c,
        "c_grid": list(C_GRID),
        "dev_balanced_accuracy": {str(c): round(v, 4) for c, v in head.dev_balanced_accuracy.items()},
        "split_rule": RULE,
        "seed": seed,
        "per_source": per_source,
        "held_out_sources": sorted(held_out),
        "rows": {
            name: dict(Counter(r.family for r in rows))
            for name, rows in (("train", data.train), ("dev", data.dev), ("test", data.test))
        },
        "test_accuracy": accuracy_by(data.test, guessed, "family"),
        "test_accuracy_by_source": accuracy_by(data.test, guessed, "source"),
    }
    head.save(folder, card, report)
    return report
