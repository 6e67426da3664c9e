"""How well each routing strategy trades dollars for accuracy on labelled rows (``router eval-routing``).

Pure: numpy, ``calibrators`` and matplotlib (for the pictures). A strategy picks one target per row; its
cost is the picked target's price per request, so the price of computing a score (a local answer for
N-Prob, say) is not counted. Two targets get RouteLLM's PGR metrics with bootstrap intervals; any number
of targets gets cost-quality curves and the cost at which each reaches 95% of the best single target.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from calibrators import (
    CostQualityCurve,
    Estimate,
    apgr,
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
from calibrators.plots import NEUTRAL, OVERCONFIDENT, UNDERCONFIDENT, _figure, _save
from calibrators.validation import FloatArray, as_scores, as_unit_interval

PER = 1000  # prices are reported per 1,000 requests: per-request dollars are unreadably small
SHARE_OF_BEST = 0.95
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
LEVEL = 0.95
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
STYLES: dict[str, dict[str, Any]] = {
    "oracle": {"color": "#2ca02c", "linestyle": "--", "linewidth": 1.2},
    "scorer": {"color": NEUTRAL, "linewidth": 2.4},
    "cascade": {"color": UNDERCONFIDENT, "linewidth": 1.6},
    "nprob": {"color": "#9467bd", "linewidth": 1.6},
    "random": {"color": "grey", "linestyle": ":", "linewidth": 1.4},
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


def evaluate_routing(
    correct: dict[str, np.ndarray],
    costs: dict[str, float],
    confidences: dict[str, np.ndarray],
    sources: list[str],
    nprob: np.ndarray | None = None,
    out: Path | None = None,
    seed: int = 0,
    n_resamples: int = 500,
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """Every strategy's metrics (see the module docstring); written to ``out`` as metrics.json, report.md,
    cost_quality.png and (two targets) pgr.png when ``out`` is given."""
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
    metrics["by_source"] = {
        name: _source_metrics(data.take(np.flatnonzero(source == name)), best)
        for name in sorted(set(source.tolist()))
    }
    if out is not None:
        _write(Path(out), metrics, strategies, data)
    return metrics


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
    if two:
        # Lowest score escalates first: the largest expected gain, mapped from [-1, 1] into [0, 1].
        out["scorer"] = escalate((1.0 + c[:, 0] - c[:, 1]) / 2)
    else:
        curve = threshold_curve(c, y, price)
        out["scorer"] = Strategy(np.arange(len(y)), curve, SHARE_OF_BEST * float(y.mean(axis=0).max()), None)
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


def _mean_label(scores: FloatArray, labels: FloatArray) -> float:
    return float(labels.mean())


def _apgr_gap(score: FloatArray, weak: FloatArray, strong: FloatArray, other: FloatArray) -> float:
    return apgr(score, weak, strong) - apgr(other, weak, strong)


def _not_better(names: list[str], accuracy: ArrayLike) -> str:
    weak, strong = np.asarray(accuracy, dtype=np.float64)[:2]
    return (
        f"PGR metrics need the strong target better than the weak one; {names[1]} {strong:.4f} <= "
        f"{names[0]} {weak:.4f} on these rows"
    )


def _estimate(boot: Callable[..., Estimate], metric: Callable[..., float], *arrays: FloatArray) -> Any:
    try:
        return boot(metric, *arrays).to_dict()
    except ValueError:
        return None  # undefined on these rows, or on most resamples of them


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
        entry["thresholds"] = [_at_threshold(data, t) for t in THRESHOLDS]
    return entry


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


def _source_metrics(data: Rows, best: int) -> dict[str, Any]:
    strategies = _strategies(data, best)
    entry: dict[str, Any] = {
        "n": len(data.correct),
        "targets": {
            name: {
                "accuracy": float(data.correct[:, j].mean()),
                "positives": int(np.count_nonzero(data.correct[:, j] == 1.0)),
            }
            for j, name in enumerate(data.names)
        },
        "strategies": {},
    }
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


def _write(out: Path, metrics: dict[str, Any], strategies: dict[str, Strategy], data: Rows) -> None:
    out.mkdir(parents=True, exist_ok=True)
    pictures = []
    if len(data.names) == 2:
        pictures.append(
            ("Share of the accuracy gap recovered", _pgr_plot(out / "pgr.png", metrics, strategies))
        )
    pictures.append(
        ("Accuracy against cost", _cost_plot(out / "cost_quality.png", metrics, strategies, data))
    )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    lines = _report(metrics)
    for caption, picture in pictures:
        lines += [f"## {caption}", "", f"![{caption}]({picture.name})", ""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")


def _apgr_label(e: dict[str, Any] | None) -> str:
    return "APGR undefined" if e is None else f"APGR {e['value']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"


def _pgr_plot(path: Path, metrics: dict[str, Any], strategies: dict[str, Strategy]) -> Path:
    """PGR against strong-call share (quality instead where the strong target is not better)."""
    weak, strong = metrics["cheapest_first"]
    pgr = "note" not in metrics
    fig = _figure(7.5, 5.4)
    ax = fig.subplots()
    for name, s in strategies.items():
        assert s.routing is not None
        entry = metrics["strategies"][name]
        rows = "" if len(s.rows) == metrics["n"] else f", on {len(s.rows)} rows"
        share = 100 * np.arange(len(s.rows) + 1) / len(s.rows)
        if pgr and entry.get("pgr_curve") is not None:
            y = routing_curve(*s.routing).pgr
        elif pgr:
            continue  # PGR undefined on this strategy's own rows
        else:
            y = s.curve.quality
        ax.plot(share, y, label=f"{name}  ({_apgr_label(entry.get('apgr'))}{rows})", **STYLES[name])
    if pgr:
        for level in (0.5, 0.8):
            ax.axhline(level, color="lightgrey", linewidth=0.8, zorder=0)
        for key, level in (("cpt50", 0.5), ("cpt80", 0.8)):
            e = metrics["strategies"]["scorer"].get(key)
            if e is not None:
                ax.plot(100 * e["value"], level, "o", color=NEUTRAL)
                ax.annotate(
                    f"scorer CPT({level:.0%}) = {e['value']:.1%}",
                    (100 * e["value"], level),
                    textcoords="offset points",
                    xytext=(8, -12),
                    fontsize=8,
                )
    gap = metrics.get("differences", {}).get("scorer - cascade", {}).get("apgr")
    if not pgr:  # then the paired gap is undefined too
        lead = f"\n{strong} is not better than {weak}: PGR undefined, accuracy shown"
    elif gap is not None:
        lead = f"\nscorer - cascade APGR {gap['value']:+.3f} [{gap['low']:+.3f}, {gap['high']:+.3f}] (paired)"
    else:
        lead = ""
    ax.set(
        xlim=(0, 100),
        xlabel=f"calls sent to {strong} (% of rows)",
        ylabel=f"PGR: share of the {weak} -> {strong} accuracy gap recovered" if pgr else "accuracy",
        title=f"{weak} -> {strong}, n = {metrics['n']}; higher and further left is better{lead}",
    )
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def _cost_plot(path: Path, metrics: dict[str, Any], strategies: dict[str, Strategy], data: Rows) -> Path:
    """Accuracy against $ per 1k requests, each strategy's cost at 95% of the best single target marked."""
    fig = _figure(7.5, 5.4)
    ax = fig.subplots()
    reference = metrics["reference_accuracy"]
    for name, s in strategies.items():
        at = metrics["strategies"][name]["cost_at_95"]
        rows = "" if len(s.rows) == metrics["n"] else f", on {len(s.rows)} rows"
        reach = "never reaches 95%" if at is None else f"95% of best at ${at:.3g}"
        # An oracle's curve stops where every row is right or cheapest; no policy is more accurate beyond.
        tail = name == "oracle" and s.routing is None
        x = np.append(s.curve.cost, data.costs.max() if tail else []) * PER
        y = np.append(s.curve.quality, s.curve.quality[-1] if tail else [])
        ax.plot(x, y, label=f"{name}  ({reach}{rows})", **STYLES[name])
        if at is not None and len(s.rows) == metrics["n"]:  # other rows have another 95% line
            ax.plot(at, s.reference, "o", color=STYLES[name]["color"], markersize=6)
    at_95 = {name: e["cost_at_95"] for name, e in metrics["strategies"].items()}
    lead = ""
    if at_95["scorer"] is not None and at_95["cascade"] is not None:
        # A bare pair of "$" would make matplotlib typeset the text between them as mathematics.
        scorer, cascade = at_95["scorer"], at_95["cascade"]
        lead = f"\nat 95% of the best: scorer \\${scorer:.3g} vs cascade \\${cascade:.3g} per 1k"
    points = metrics["strategies"]["scorer"]["thresholds"]
    ax.plot(
        [p["cost_per_1k"] for p in points],
        [p["accuracy"] for p in points],
        "x",
        color=NEUTRAL,
        label="scorer's rule at t = " + ", ".join(f"{p['threshold']:g}" for p in points),
    )
    for j, name in enumerate(data.names):
        x, y = data.costs[j] * PER, data.correct[:, j].mean()
        ax.plot(x, y, "s", color="black", markersize=5)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    best = metrics["best"]
    ax.axhline(
        reference,
        color=OVERCONFIDENT,
        linestyle="--",
        linewidth=1,
        label=f"95% of the best single target ({best}, {metrics['targets'][best]['accuracy']['value']:.3f}); "
        "dots: first reached",
    )
    ax.set(
        xlabel="dollars per 1,000 requests",
        ylabel="accuracy (mean correctness)",
        title=f"Accuracy against cost, n = {metrics['n']}; higher and further left is better{lead}",
    )
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def _fmt(e: dict[str, Any] | None, pct: bool = False) -> str:
    if e is None:
        return "undefined"
    if pct:
        return f"{e['value']:.1%} [{e['low']:.1%}, {e['high']:.1%}]"
    return f"{e['value']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"


def _dollars(value: float | None) -> str:
    return "never" if value is None else f"${value:.4g}"


def _report(metrics: dict[str, Any]) -> list[str]:
    names: list[str] = metrics["cheapest_first"]
    two = len(names) == 2
    boot = metrics["bootstrap"]
    lines = ["# Routing evaluation", ""]
    lines += [f"- {note}" for note in metrics["notes"]] + ([""] if metrics["notes"] else [])
    lines += [
        f"{metrics['n']} rows; targets cheapest first. Intervals: {boot['level']:.0%} percentile bootstrap "
        f"over rows ({boot['n_resamples']} resamples, seed {boot['seed']}). A strategy pays only the price "
        "of the target it picks. Cost at 95%: the lowest $ per 1,000 requests at which its curve reaches "
        f"95% of the best single target ({metrics['best']}): accuracy "
        f"{metrics['reference_accuracy']:.4f}.",
        "",
    ]
    if "note" in metrics:
        lines += [f"**{metrics['note']}**: APGR and CPT are undefined; the cost curves still hold.", ""]
    lines += [
        "## Targets",
        "",
        "| target | $ per 1k | accuracy [interval] | n | positives |",
        "| --- | ---: | --- | ---: | ---: |",
    ]
    for name, t in metrics["targets"].items():
        e = t["accuracy"]
        lines.append(f"| {name} | {_dollars(t['cost_per_1k'])} | {_fmt(e)} | {e['n']} | {t['positives']} |")
    lines += ["", "## Strategies", ""]
    if two:
        lines += [
            "| strategy | rows | APGR [interval] | CPT(50%) | CPT(80%) | resamples | cost at 95% |",
            "| --- | ---: | --- | --- | --- | ---: | ---: |",
        ]
    else:
        lines += ["| strategy | rows | cost at 95% |", "| --- | ---: | ---: |"]
    for name, s in metrics["strategies"].items():
        cost = _dollars(s["cost_at_95"])
        if two:
            used = "" if s["apgr"] is None else s["apgr"]["resamples"]
            lines.append(
                f"| {name} | {s['n']} | {_fmt(s['apgr'])} | {_fmt(s['cpt50'], True)} "
                f"| {_fmt(s['cpt80'], True)} | {used} | {cost} |"
            )
        else:
            lines.append(f"| {name} | {s['n']} | {cost} |")
    lines += [""] + [f"- {name}: {s['description']}" for name, s in metrics["strategies"].items()] + [""]
    for label, d in metrics.get("differences", {}).items():
        lines.append(f"Paired APGR difference, {label} (on {d['n']} rows): {_fmt(d['apgr'])}.")
    lines += [
        "",
        "## The scorer's threshold rule",
        "",
        "Cheapest target whose confidence >= t, else the most likely.",
        "",
    ]
    lines += [
        "| t | accuracy | $ per 1k | " + " | ".join(names) + " |",
        "| ---: | ---: | ---: |" + " ---: |" * len(names),
    ]
    for p in metrics["strategies"]["scorer"]["thresholds"]:
        shares = " | ".join(f"{p['share'][name]:.1%}" for name in names)
        lines.append(
            f"| {p['threshold']:g} | {p['accuracy']:.4f} | {_dollars(p['cost_per_1k'])} | {shares} |"
        )
    lines += _source_table(metrics, two)
    return lines


def _source_table(metrics: dict[str, Any], two: bool) -> list[str]:
    names: list[str] = metrics["cheapest_first"]
    strategies = list(metrics["strategies"])
    what = "APGR" if two else "cost at 95% ($ per 1k)"
    undefined = (
        "n/a: the strong target is not better there" if two else "never: 95% of the source's best unmet"
    )
    lines = [
        "",
        "## By source",
        "",
        f"Accuracy (positives) per target, then each strategy's {what} on the source's rows; {undefined}.",
        "",
        "| source | n | " + " | ".join(names + strategies) + " |",
        "| --- | ---: |" + " ---: |" * (len(names) + len(strategies)),
    ]
    for source, entry in metrics["by_source"].items():
        cells = [f"{t['accuracy']:.3f} ({t['positives']})" for t in entry["targets"].values()]
        for name in strategies:
            s = entry["strategies"].get(name)
            value = None if s is None else (s.get("apgr") if two else s["cost_at_95"])
            cells.append("" if s is None else (undefined.split(":")[0] if value is None else f"{value:.3g}"))
        lines.append(f"| {source} | {entry['n']} | " + " | ".join(cells) + " |")
    return [*lines, ""]
