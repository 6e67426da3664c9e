"""The files ``router eval-routing`` writes from train/routing_eval.py's metrics: metrics.json, report.md,
cost_quality.png and, for two targets, pgr.png.

The pictures need each strategy's full curve, so they are drawn from the evaluation's ``Strategy`` and
``Rows`` as well as from the metrics; report.md is written from the metrics alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from calibrators import routing_curve
from calibrators.plots import NEUTRAL, OVERCONFIDENT, UNDERCONFIDENT, figure, save
from train.routing_eval import PER, RoutingEvaluation, Rows, Strategy

# One style per strategy, shared by both pictures so a strategy looks the same in each.
STYLES: dict[str, dict[str, Any]] = {
    "oracle": {"color": "#2ca02c", "linestyle": "--", "linewidth": 1.2},
    "scorer": {"color": NEUTRAL, "linewidth": 2.4},
    "cascade": {"color": UNDERCONFIDENT, "linewidth": 1.6},
    "nprob": {"color": "#9467bd", "linewidth": 1.6},
    "random": {"color": "grey", "linestyle": ":", "linewidth": 1.4},
}


def write_report(out: Path, evaluation: RoutingEvaluation) -> None:
    """Write metrics.json, report.md and the pictures it links to into ``out``, created if missing:
    cost_quality.png, and pgr.png for two targets."""
    metrics, strategies, data = evaluation.metrics, evaluation.strategies, evaluation.rows
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
    lines = _report_lines(metrics)
    for caption, picture in pictures:
        lines += [f"## {caption}", "", f"![{caption}]({picture.name})", ""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")


def _pgr_plot(path: Path, metrics: dict[str, Any], strategies: dict[str, Strategy]) -> Path:
    """PGR against strong-call share (quality instead where the strong target is not better)."""
    weak, strong = metrics["cheapest_first"]
    pgr = "note" not in metrics
    fig = figure(7.5, 5.4)
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
    return save(fig, path)


def _apgr_label(e: dict[str, Any] | None) -> str:
    return "APGR undefined" if e is None else f"APGR {e['value']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"


def _cost_plot(path: Path, metrics: dict[str, Any], strategies: dict[str, Strategy], data: Rows) -> Path:
    """Accuracy against $ per 1k requests, each strategy's cost at 95% of the best single target marked."""
    fig = figure(7.5, 5.4)
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
    return save(fig, path)


def _report_lines(metrics: dict[str, Any]) -> list[str]:
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
        "AUROC: the scorer's confidence for the target against the target's own correctness.",
        "",
        "| target | $ per 1k | accuracy [interval] | n | positives | AUROC [interval] |",
        "| --- | ---: | --- | ---: | ---: | --- |",
    ]
    for name, t in metrics["targets"].items():
        e = t["accuracy"]
        listed = f"| {name} | {_dollars(t['cost_per_1k'])} | {_fmt(e)} | {e['n']} | {t['positives']}"
        lines.append(f"{listed} | {_fmt(t.get('auroc'))} |")
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
        "Cheapest target whose confidence >= t, else the most likely; t at quantiles q of the cheapest "
        "target's confidence on these rows.",
        "",
    ]
    lines += [
        "| q | t | accuracy | $ per 1k | " + " | ".join(names) + " |",
        "| ---: | ---: | ---: | ---: |" + " ---: |" * len(names),
    ]
    for p in metrics["strategies"]["scorer"]["thresholds"]:
        shares = " | ".join(f"{p['share'][name]:.1%}" for name in names)
        rule = f"| {p['quantile']:g} | {p['threshold']:.4f} | {p['accuracy']:.4f}"
        lines.append(f"{rule} | {_dollars(p['cost_per_1k'])} | {shares} |")
    lines += _group_table(metrics, two, "source")
    if "by_family" in metrics:
        lines += _group_table(metrics, two, "family")
    return lines


def _group_table(metrics: dict[str, Any], two: bool, group: str) -> list[str]:
    names: list[str] = metrics["cheapest_first"]
    strategies = list(metrics["strategies"])
    what = "APGR" if two else "cost at 95% ($ per 1k)"
    undefined = (
        "n/a: the strong target is not better there" if two else "never: 95% of the source's best unmet"
    )
    lines = [
        "",
        f"## By {group}",
        "",
        f"Accuracy (positives) and the scorer's AUROC per target, then each strategy's {what} on the "
        f"{group}'s rows; {undefined}; where no target is ever right, no ratio at all.",
        "",
        f"| {group} | n | " + " | ".join(names + strategies) + " |",
        "| --- | ---: |" + " ---: |" * (len(names) + len(strategies)),
    ]
    for source, entry in metrics[f"by_{group}"].items():
        targets = entry["targets"].values()
        if "note" in entry:
            blank = " |" * (len(names) + len(strategies) - 1)
            lines.append(f"| {source} | {entry['n']} | {entry['note']} |{blank}")
            continue
        cells = [f"{t['accuracy']:.3f} ({t['positives']}), {_point(t.get('auroc'))}" for t in targets]
        for name in strategies:
            s = entry["strategies"].get(name)
            value = None if s is None else (s.get("apgr") if two else s["cost_at_95"])
            cells.append("" if s is None else (undefined.split(":")[0] if value is None else f"{value:.3g}"))
        lines.append(f"| {source} | {entry['n']} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _point(value: float | None) -> str:
    return "AUROC -" if value is None else f"AUROC {value:.3f}"


def _fmt(e: dict[str, Any] | None, pct: bool = False) -> str:
    if e is None:
        return "undefined"
    if pct:
        return f"{e['value']:.1%} [{e['low']:.1%}, {e['high']:.1%}]"
    return f"{e['value']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"


def _dollars(value: float | None) -> str:
    return "never" if value is None else f"${value:.4g}"


def write_comparison(out: Path, metrics: dict[str, Any]) -> None:
    """metrics.json and report.md of `router eval-routing --candidate` (train/routing_compare.py's
    metrics) into ``out``; each scorer's own report is beside them, in current/ and candidate/."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    (out / "report.md").write_text("\n".join(_comparison_lines(metrics)), encoding="utf-8")


def _comparison_lines(metrics: dict[str, Any]) -> list[str]:
    boot, scorers, differences = metrics["bootstrap"], metrics["scorers"], metrics["differences"]
    lines = ["# Scorer comparison: candidate against current", ""]
    lines += [f"- {note}" for note in metrics["notes"]] + ([""] if metrics["notes"] else [])
    reasons = "; ".join(metrics["reasons"])
    lines += [
        f"**Verdict: the candidate is {metrics['verdict']}**" + (f": {reasons}." if reasons else "."),
        "",
    ]
    lines += [
        f"{metrics['n']} rows, held out for both scorers; targets cheapest first "
        f"({', '.join(metrics['cheapest_first'])}). Paired bootstrap: {boot['n_resamples']} resamples of the "
        f"rows (seed {boot['seed']}), both scorers judged on each; {boot['level']:.0%} percentile intervals. "
        "Each scorer's `scorer` strategy (docs/routing.md); cost at 95%: the lowest $ per 1,000 requests at "
        f"which it reaches 95% of the best single target's accuracy ({metrics['best']}). The candidate is "
        "worse beyond noise when the interval of its APGR minus the current's lies wholly below 0, or that "
        "of its cost at 95% minus the current's wholly above 0.",
        "",
        "| figure | current | candidate | candidate - current (paired) |",
        "| --- | --- | --- | --- |",
    ]
    for key, label in (("apgr", "APGR"), ("cost_at_95", "cost at 95% ($ per 1k)")):
        if key in differences:
            cells = [_fmt(scorers[role][key]) for role in ("current", "candidate")]
            lines.append(f"| {label} | {' | '.join(cells)} | {_signed(differences[key])} |")
    for group in ("source", "family"):
        if f"by_{group}" in metrics:
            lines += _comparison_groups(metrics[f"by_{group}"], group, "apgr" in differences)
    lines += [
        "",
        "Each scorer's full report on the same rows: [current](current/report.md), "
        "[candidate](candidate/report.md).",
        "",
    ]
    return lines


def _signed(e: dict[str, Any] | None) -> str:
    if e is None:
        return "undefined"
    return f"{e['value']:+.3f} [{e['low']:+.3f}, {e['high']:+.3f}]"


def _comparison_groups(groups: dict[str, Any], group: str, two: bool) -> list[str]:
    figures = [("apgr", "APGR")] if two else []
    figures.append(("cost_at_95", "cost at 95%"))
    header = [f"{label}, {role}" for _, label in figures for role in ("current", "candidate")]
    lines = [
        "",
        f"## By {group}",
        "",
        f"Point values on the {group}'s rows (no interval); blank where undefined there.",
        "",
        f"| {group} | n | " + " | ".join(header) + " |",
        "| --- | ---: |" + " ---: |" * len(header),
    ]
    for name, entry in groups.items():
        cells = [entry[role][key] for key, _ in figures for role in ("current", "candidate")]
        shown = " | ".join("" if value is None else f"{value:.3g}" for value in cells)
        lines.append(f"| {name} | {entry['n']} | {shown} |")
    return lines
