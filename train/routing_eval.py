"""How well each routing strategy trades dollars for accuracy on labelled rows (``router eval-routing``).

Pure: numpy and ``calibrators``. A strategy picks one target per row; its cost is the picked target's
price per request, so the price of computing a score (a local answer for N-Prob, say) is not counted. Two
targets get RouteLLM's PGR metrics with bootstrap intervals; any number of targets gets cost-quality curves
and the cost at which each reaches 95% of the best single target. Nothing here writes a file:
train/routing_report.py writes an evaluation's metrics, report.md and the pictures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from calibrators import (
    CostQualityCurve,
    Estimate,
    apgr,
    auroc,
    bootstrap,
    cost_at_quality,
    cpt,
    escalation_curve,
    oracle_curve,
    routing_curve,
    subsample,
    threshold_choice,
    threshold_curve,
)
from calibrators.validation import FloatArray, as_scores, as_unit_interval

PER = 1000  # prices are reported per 1,000 requests: per-request dollars are unreadably small
SHARE_OF_BEST = 0.95
THRESHOLD_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
"""The threshold rule is shown at these quantiles of the cheapest target's confidence on the rows, so that
its table spans the confidences a scorer actually gives (fixed thresholds say nothing for a scorer whose
confidences all lie below 0.5)."""
LEVEL = 0.95
RESAMPLES = 500
# Per strategy: (two targets, more targets); {dear} is the strong target, or the most accurate of many.
DESCRIPTIONS = {
    "scorer": (
        "the scorer's P(correct) per target; largest expected gain P(strong) - P(weak) escalated first",
        "the scorer's P(correct) per target: the cheapest target with confidence >= t, else the most "
        "likely, swept over t",
    ),
    "cascade": ("the cheapest target's confidence alone; least confident sent to {dear} first",) * 2,
    "nprob": ("the cheapest target's N-Prob, on the rows that have it; least confident sent to {dear} first",)
    * 2,
    "random": ("expected random routing: the straight line from the cheapest target to {dear}",) * 2,
    "oracle": (
        "knows every answer: the rows only {dear} gets right escalated first",
        "knows every answer: each row's cheapest correct target, cheapest extra price first",
    ),
}


@dataclass(frozen=True)
class Rows:
    """The labelled rows, targets cheapest first: one column per target."""

    names: list[str]
    correct: FloatArray
    confidences: FloatArray
    costs: FloatArray
    nprob: FloatArray | None

    def take(self, rows: NDArray[np.intp]) -> Rows:
        nprob = None if self.nprob is None else self.nprob[rows]
        return Rows(self.names, self.correct[rows], self.confidences[rows], self.costs, nprob)


@dataclass(frozen=True)
class Strategy:
    """A strategy's full cost-quality curve on its rows and, for two targets, its routing_curve inputs."""

    rows: NDArray[np.intp]  # which of the evaluated rows it was judged on
    curve: CostQualityCurve
    reference: float  # 95% of the best single target's accuracy on the same rows
    routing: tuple[FloatArray, FloatArray, FloatArray] | None  # (weak confidence, weak, strong)


@dataclass(frozen=True)
class RoutingEvaluation:
    """The metrics, and the curves and rows behind them that the report draws."""

    metrics: dict[str, Any]
    strategies: dict[str, Strategy]
    rows: Rows


def evaluate_routing(
    correct: dict[str, np.ndarray],
    costs: dict[str, float],
    confidences: dict[str, np.ndarray],
    sources: list[str],
    nprob: np.ndarray | None = None,
    seed: int = 0,
    n_resamples: int = RESAMPLES,
    notes: Sequence[str] = (),
    families: list[str] | None = None,
) -> dict[str, Any]:
    """Every strategy's metrics (see the module docstring)."""
    return routing_evaluation(
        correct, costs, confidences, sources, nprob, seed, n_resamples, notes, families
    ).metrics


def routing_evaluation(
    correct: dict[str, np.ndarray],
    costs: dict[str, float],
    confidences: dict[str, np.ndarray],
    sources: list[str],
    nprob: np.ndarray | None = None,
    seed: int = 0,
    n_resamples: int = RESAMPLES,
    notes: Sequence[str] = (),
    families: list[str] | None = None,
) -> RoutingEvaluation:
    """`evaluate_routing`'s metrics with the strategies and rows they were computed from; `families`, each
    row's task family, adds the same breakdown by family as by source."""
    data, source = _validate(correct, costs, confidences, sources, nprob)
    accuracy = data.correct.mean(axis=0)
    best = int(np.argmax(accuracy))  # the cheapest of the most accurate on ties
    two = len(data.names) == 2
    strategies = _strategies(data, best)
    boot = partial(bootstrap, n_resamples=n_resamples, level=LEVEL, seed=seed)
    metrics: dict[str, Any] = {
        "n": len(source),
        "targets": {
            name: {
                "accuracy": boot(_mean_label, data.correct[:, j], data.correct[:, j]).to_dict(),
                "positives": int(np.count_nonzero(data.correct[:, j] == 1.0)),
                "cost_per_1k": float(data.costs[j] * PER),
                # How well the scorer ranks this target's own answers: what routing to it rests on.
                "auroc": _estimate(boot, auroc, data.confidences[:, j], data.correct[:, j]),
            }
            for j, name in enumerate(data.names)
        },
        "cheapest_first": data.names,
        "best": data.names[best],
        "reference_accuracy": float(SHARE_OF_BEST * accuracy[best]),
        "bootstrap": {"level": LEVEL, "n_resamples": n_resamples, "seed": seed},
        "notes": list(notes),
    }
    if two and accuracy[1] <= accuracy[0]:
        metrics["note"] = _not_better(data.names, accuracy)
    dear = data.names[1 if two else best]
    metrics["strategies"] = {
        name: _strategy_metrics(name, s, data, dear, boot) for name, s in strategies.items()
    }
    if two:
        metrics["differences"] = _differences(strategies, boot)
    metrics["by_source"] = _breakdown(data, source, best)
    if families is not None:
        metrics["by_family"] = _breakdown(data, np.asarray(families, dtype=np.str_), best)
    return RoutingEvaluation(metrics, strategies, data)


def _breakdown(data: Rows, groups: NDArray[np.str_], best: int) -> dict[str, Any]:
    """Each group's rows judged alone (a source's, a family's), the best target being the full set's."""
    return {
        name: _source_metrics(data.take(np.flatnonzero(groups == name)), best)
        for name in sorted(set(groups.tolist()))
    }


def _validate(
    correct: dict[str, np.ndarray],
    costs: dict[str, float],
    confidences: dict[str, np.ndarray],
    sources: list[str],
    nprob: np.ndarray | None,
) -> tuple[Rows, NDArray[np.str_]]:
    if len(correct) < 2:
        raise ValueError(f"routing needs at least two targets to choose between; got {list(correct)}")
    for what, keys in (("costs", costs), ("confidences", confidences)):
        if set(keys) != set(correct):
            raise ValueError(
                f"{what} must name the same targets as correct {list(correct)}; got {list(keys)}"
            )
    lengths: dict[str, ArrayLike] = {f"correct[{k!r}]": v for k, v in correct.items()}
    lengths |= {f"confidences[{k!r}]": v for k, v in confidences.items()}
    lengths |= {"sources": sources} | ({} if nprob is None else {"nprob": nprob})
    sizes = {what: len(np.atleast_1d(np.asarray(v))) for what, v in lengths.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"every per-row array needs the same number of rows; got {sizes}")
    n = sizes["sources"]
    bad = {k: v for k, v in costs.items() if not (np.isfinite(v) and v >= 0)}
    if bad:
        raise ValueError(f"costs must be finite dollars per request, at least 0; got {bad}")
    # Stable sort: targets of equal price keep the caller's order.
    names = sorted(correct, key=lambda name: float(costs[name]))
    y = np.column_stack([as_unit_interval(correct[k], n, name=f"correct[{k!r}]") for k in names])
    c = np.column_stack([as_scores(confidences[k], name=f"confidences[{k!r}]") for k in names])
    weak_nprob = None if nprob is None else _nprob(nprob)
    price = np.array([float(costs[k]) for k in names])
    return Rows(names, y, c, price, weak_nprob), np.asarray(sources, dtype=np.str_)


def _nprob(values: ArrayLike) -> FloatArray:
    array = np.asarray(values, dtype=np.float64)
    present = array[~np.isnan(array)]
    if present.size and not (np.all(np.isfinite(present)) and present.min() >= 0 and present.max() <= 1):
        raise ValueError(
            f"nprob must be probabilities in [0, 1] or NaN; got [{present.min()}, {present.max()}]"
        )
    return array


def _strategies(data: Rows, best: int) -> dict[str, Strategy]:
    """Each strategy's curve. Two targets escalate weak -> strong; more escalate the cheapest -> ``best``
    (the full set's most accurate, so a per-source breakdown judges the same policy)."""
    y, c, price = data.correct, data.confidences, data.costs
    two = y.shape[1] == 2
    dear = 1 if two else best

    def escalate(score: FloatArray, rows: NDArray[np.intp] | slice = slice(None)) -> Strategy:
        weak, strong = y[rows, 0], y[rows, dear]
        curve = escalation_curve(score, weak, strong, price[0], price[dear])
        reference = SHARE_OF_BEST * float(y[rows].mean(axis=0).max())
        index = np.arange(len(y))[rows]
        return Strategy(index, curve, reference, (score, weak, strong) if two else None)

    out: dict[str, Strategy] = {}
    routing = (expected_gain(c), y[:, 0], y[:, 1]) if two else None
    reference = SHARE_OF_BEST * float(y.mean(axis=0).max())
    out["scorer"] = Strategy(np.arange(len(y)), scorer_curve(data), reference, routing)
    out["cascade"] = escalate(c[:, 0])
    if data.nprob is not None and not np.all(np.isnan(data.nprob)):
        rows = np.flatnonzero(~np.isnan(data.nprob))
        out["nprob"] = escalate(data.nprob[rows], rows)
    # A constant score routes every row as one tie group: the expected random curve, APGR 0.5 exactly.
    out["random"] = escalate(np.full(len(y), 0.5))
    if two:
        out["oracle"] = escalate((1.0 + y[:, 0] - y[:, 1]) / 2)
    else:
        curve = oracle_curve(y, price)
        out["oracle"] = Strategy(np.arange(len(y)), curve, out["scorer"].reference, None)
    return out


def expected_gain(confidences: FloatArray) -> FloatArray:
    """Two targets' escalation order, lowest first: the largest expected gain P(strong) - P(weak), mapped
    from [-1, 1] into [0, 1]."""
    return (1.0 + confidences[:, 0] - confidences[:, 1]) / 2


def scorer_curve(data: Rows) -> CostQualityCurve:
    """The scorer strategy's cost-quality curve: escalation by expected gain for two targets, else the
    threshold rule swept over t."""
    y, c, price = data.correct, data.confidences, data.costs
    if y.shape[1] == 2:
        return escalation_curve(expected_gain(c), y[:, 0], y[:, 1], price[0], price[1])
    return threshold_curve(c, y, price)


def _mean_label(scores: FloatArray, labels: FloatArray) -> float:
    return float(labels.mean())


def _not_better(names: list[str], accuracy: ArrayLike) -> str:
    weak, strong = np.asarray(accuracy, dtype=np.float64)[:2]
    return (
        f"PGR metrics need the strong target better than the weak one; {names[1]} {strong:.4f} <= "
        f"{names[0]} {weak:.4f} on these rows"
    )


def _strategy_metrics(
    name: str, s: Strategy, data: Rows, dear: str, boot: Callable[..., Estimate]
) -> dict[str, Any]:
    keep = subsample(len(s.curve.cost))
    at_95 = cost_at_quality(s.curve, s.reference)
    entry: dict[str, Any] = {
        "n": len(s.rows),
        "description": DESCRIPTIONS[name][s.routing is None].format(dear=dear),
        "cost_at_95": None if at_95 is None else at_95 * PER,
        "cost_quality": {
            "cost_per_1k": np.round(s.curve.cost[keep] * PER, 6).tolist(),
            "accuracy": np.round(s.curve.quality[keep], 6).tolist(),
        },
    }
    if s.routing is not None:
        score, weak, strong = s.routing
        metrics: dict[str, Callable[..., float]] = {
            "apgr": apgr,
            "cpt50": partial(cpt, target=0.5),
            "cpt80": partial(cpt, target=0.8),
        }
        entry |= {key: _estimate(boot, metric, score, weak, strong) for key, metric in metrics.items()}
        if strong.mean() > weak.mean():
            curve = routing_curve(score, weak, strong)
            keep = subsample(len(curve.pgr))
            entry["pgr_curve"] = {
                "strong_share": np.round(curve.strong_share[keep], 6).tolist(),
                "pgr": np.round(curve.pgr[keep], 6).tolist(),
                "quality": np.round(curve.quality[keep], 6).tolist(),
            }
        else:
            entry |= {"pgr_curve": None, "note": _not_better(data.names, [weak.mean(), strong.mean()])}
    if name == "scorer":
        cheapest = data.confidences[:, 0]
        at = [(q, float(np.quantile(cheapest, q))) for q in THRESHOLD_QUANTILES]
        entry["thresholds"] = [_at_threshold(data, t) | {"quantile": q} for q, t in at]
    return entry


def _estimate(boot: Callable[..., Estimate], metric: Callable[..., float], *arrays: FloatArray) -> Any:
    try:
        return boot(metric, *arrays).to_dict()
    except ValueError:
        return None  # undefined on these rows, or on most resamples of them


def _auroc_or_none(confidences: FloatArray, correct: FloatArray) -> float | None:
    both = 0 < np.count_nonzero(correct == 1.0) < len(correct)
    return float(auroc(confidences, correct)) if both else None


def _at_threshold(data: Rows, threshold: float) -> dict[str, Any]:
    """The deployable rule "cheapest target whose confidence >= t, else the most likely" at one t."""
    choice = threshold_choice(data.confidences, threshold)
    share = np.bincount(choice, minlength=len(data.names)) / len(choice)
    return {
        "threshold": threshold,
        "accuracy": float(data.correct[np.arange(len(choice)), choice].mean()),
        "cost_per_1k": float(data.costs[choice].mean() * PER),
        "share": dict(zip(data.names, share.tolist(), strict=True)),
    }


def _differences(strategies: dict[str, Strategy], boot: Callable[..., Estimate]) -> dict[str, Any]:
    """Paired bootstrap of APGR differences: both strategies on the same resampled rows, so the interval
    says whether the scorer's lead is more than noise, which two overlapping intervals cannot."""
    scorer = strategies["scorer"]
    assert scorer.routing is not None  # two targets
    out: dict[str, Any] = {}
    for other in ("cascade", "nprob"):
        s = strategies.get(other)
        if s is None or s.routing is None:
            continue
        score, weak, strong = (array[s.rows] for array in scorer.routing)
        out[f"scorer - {other}"] = {
            "n": len(s.rows),
            "apgr": _estimate(boot, _apgr_gap, score, weak, strong, s.routing[0]),
        }
    return out


def _apgr_gap(score: FloatArray, weak: FloatArray, strong: FloatArray, other: FloatArray) -> float:
    return apgr(score, weak, strong) - apgr(other, weak, strong)


def _source_metrics(data: Rows, best: int) -> dict[str, Any]:
    strategies = _strategies(data, best)
    entry: dict[str, Any] = {
        "n": len(data.correct),
        "targets": {
            name: {
                "accuracy": float(data.correct[:, j].mean()),
                "positives": int(np.count_nonzero(data.correct[:, j] == 1.0)),
                "auroc": _auroc_or_none(data.confidences[:, j], data.correct[:, j]),
            }
            for j, name in enumerate(data.names)
        },
        "strategies": {},
    }
    if not data.correct.any():
        entry["note"] = "no target is ever right on these rows: no ratio"
    for name, s in strategies.items():
        at_95 = cost_at_quality(s.curve, s.reference)
        result: dict[str, Any] = {"n": len(s.rows), "cost_at_95": None if at_95 is None else at_95 * PER}
        if s.routing is not None:
            try:
                result["apgr"] = apgr(*s.routing)
            except ValueError:
                result["apgr"] = None  # the strong target is not better on this source
        entry["strategies"][name] = result
    return entry
