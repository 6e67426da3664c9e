"""Whether a candidate scorer routes worse than the current one (``router eval-routing --candidate``).

Pure: numpy and ``calibrators``. Both scorers' routing evaluations (train/routing_eval.py) on the same
labelled rows; a paired bootstrap, one set of resampled row indices with both scorers judged on each, of
the scorer strategy's APGR (two targets) and of its cost at 95% of the best target's accuracy. Paired,
because both scorers share the rows' luck: the interval of the difference is far narrower than two
overlapping intervals would suggest, and it alone says whether a gap is more than noise.

The candidate is worse beyond noise when the interval of (candidate - current) APGR lies wholly below 0,
or that of the cost difference wholly above 0 (or, where APGR is undefined, when only the current scorer
reaches 95% at all); better when an interval lies wholly on the good side and neither says worse.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
from numpy.typing import NDArray

from calibrators import apgr, bootstrap, cost_at_quality
from train.routing_eval import LEVEL, PER, SHARE_OF_BEST, RoutingEvaluation, Rows, expected_gain, scorer_curve

PAIRED_RESAMPLES = 1000
WORSE, NO_WORSE, BETTER = "worse beyond noise", "no worse within noise", "better"
ROLES = ("current", "candidate")


def compare_evaluations(
    current: RoutingEvaluation,
    candidate: RoutingEvaluation,
    seed: int = 0,
    n_resamples: int = PAIRED_RESAMPLES,
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """The comparison's metrics: each scorer's figures, the paired differences, the verdict and its
    reasons, and per source (and family) each scorer's point figures from its own evaluation."""
    now, new = current.rows, candidate.rows
    if now.names != new.names or not np.array_equal(now.correct, new.correct):
        raise ValueError("the two evaluations must judge the same rows and targets")
    # The rows' indices stand in for the scores: every metric reads both scorers' rows at one resample.
    index, labels = np.arange(len(now.correct), dtype=np.float64), now.correct[:, 0]
    boot = partial(bootstrap, n_resamples=n_resamples, level=LEVEL, seed=seed)

    def paired(metric: Callable[[NDArray[np.intp]], float]) -> dict[str, Any] | None:
        try:
            return boot(lambda i, _: metric(i.astype(np.intp)), index, labels).to_dict()
        except ValueError:
            return None  # undefined on these rows, or on most resamples of them

    two = len(now.names) == 2
    figures = {"apgr": _apgr, "cost_at_95": _cost_at_95} if two else {"cost_at_95": _cost_at_95}
    scorers = {
        role: {key: paired(partial(_on, f, rows)) for key, f in figures.items()}
        for role, rows in zip(ROLES, (now, new), strict=True)
    }
    differences = {key: paired(partial(_gap, f, now, new)) for key, f in figures.items()}
    verdict, reasons = judge(scorers, differences)
    metrics: dict[str, Any] = {
        "n": len(index),
        "cheapest_first": now.names,
        "best": current.metrics["best"],
        "reference_accuracy": current.metrics["reference_accuracy"],
        "bootstrap": {"level": LEVEL, "n_resamples": n_resamples, "seed": seed, "paired": True},
        "scorers": scorers,
        "differences": differences,
        "verdict": verdict,
        "reasons": reasons,
        "notes": list(notes),
    }
    for group in ("by_source", "by_family"):
        if group in current.metrics:
            metrics[group] = _groups(current.metrics[group], candidate.metrics[group])
    return metrics


def judge(scorers: dict[str, Any], differences: dict[str, Any]) -> tuple[str, list[str]]:
    """The verdict and the facts it rests on, each a clause for one line."""
    worse: list[str] = []
    better: list[str] = []
    gap, cost = differences.get("apgr"), differences["cost_at_95"]
    if gap is not None:
        said = f"APGR candidate - current {_interval(gap, '.3f')}"
        if gap["high"] < 0:
            worse.append(f"{said} wholly below 0")
        elif gap["low"] > 0:
            better.append(f"{said} wholly above 0")
    if cost is not None:
        said = f"cost at 95% candidate - current {_interval(cost, '.4g')} $ per 1k"
        if cost["low"] > 0:
            worse.append(f"{said} wholly above 0")
        elif cost["high"] < 0:
            better.append(f"{said} wholly below 0")
    elif gap is None and scorers["current"]["cost_at_95"] and not scorers["candidate"]["cost_at_95"]:
        worse.append("the candidate never reaches 95% of the best target's accuracy; the current does")
    if worse:
        return WORSE, worse
    return (BETTER, better) if better else (NO_WORSE, [])


def _on(metric: Callable[[Rows], float], rows: Rows, index: NDArray[np.intp]) -> float:
    return metric(rows.take(index))


def _gap(metric: Callable[[Rows], float], now: Rows, new: Rows, index: NDArray[np.intp]) -> float:
    return metric(new.take(index)) - metric(now.take(index))


def _apgr(rows: Rows) -> float:
    """Two targets' APGR by expected gain; ValueError where the strong target is not better."""
    return apgr(expected_gain(rows.confidences), rows.correct[:, 0], rows.correct[:, 1])


def _cost_at_95(rows: Rows) -> float:
    """$ per 1,000 requests at which the scorer's curve first reaches 95% of the best target's accuracy on
    these rows; ValueError where it never does (that resample is left out)."""
    reference = SHARE_OF_BEST * float(rows.correct.mean(axis=0).max())
    cost = cost_at_quality(scorer_curve(rows), reference)
    if cost is None:
        raise ValueError("never reaches 95% of the best target")
    return cost * PER


def _groups(current: dict[str, Any], candidate: dict[str, Any]) -> dict[str, Any]:
    """Each group's scorer APGR (two targets) and cost at 95%, per scorer, from the evaluations' breakdown."""
    out = {}
    for name, entry in current.items():
        figures = {}
        for role, group in zip(ROLES, (entry, candidate[name]), strict=True):
            scorer = group["strategies"]["scorer"]
            figures[role] = {"apgr": scorer.get("apgr"), "cost_at_95": scorer["cost_at_95"]}
        out[name] = {"n": entry["n"], **figures}
    return out


def _interval(e: dict[str, Any], spec: str) -> str:
    return f"{e['value']:+{spec}} [{e['low']:+{spec}}, {e['high']:+{spec}}]"
