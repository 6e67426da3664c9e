"""All metrics of a scorer with bootstrap intervals, and a markdown report that embeds the pictures."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from calibrators import metrics, plots, routing, selective
from calibrators.bootstrap import Estimate, Metric, bootstrap, calibrated_band
from calibrators.validation import FloatArray, as_labels, as_scores, as_unit_interval


@dataclass(frozen=True)
class MetricSpec:
    key: str
    label: str
    better: str  # "lower", "higher" or "" where neither is better
    metric: Metric


def _accuracy(confidences: FloatArray, labels: FloatArray) -> float:
    return float(np.mean(labels))


def _brier_part(part: str, n_bins: int) -> Metric:
    def metric(confidences: FloatArray, labels: FloatArray) -> float:
        return float(getattr(metrics.brier_decomposition(confidences, labels, n_bins), part))

    return metric


def scorer_metrics(n_bins: int = metrics.DEFAULT_BINS) -> list[MetricSpec]:
    """The metrics of a confidence against 0/1 correctness, in report order."""
    return [
        MetricSpec("accuracy", "accuracy (base rate)", "", _accuracy),
        MetricSpec("ece", f"ECE ({n_bins} equal-width bins)", "lower", partial(metrics.ece, n_bins=n_bins)),
        MetricSpec(
            "adaptive_ece",
            f"adaptive ECE ({n_bins} equal-mass bins)",
            "lower",
            partial(metrics.adaptive_ece, n_bins=n_bins),
        ),
        MetricSpec("mce", "MCE", "lower", partial(metrics.mce, n_bins=n_bins)),
        MetricSpec("brier", "Brier score", "lower", metrics.brier_score),
        MetricSpec("brier_reliability", "Brier reliability", "lower", _brier_part("reliability", n_bins)),
        MetricSpec("brier_resolution", "Brier resolution", "higher", _brier_part("resolution", n_bins)),
        MetricSpec("brier_uncertainty", "Brier uncertainty", "", _brier_part("uncertainty", n_bins)),
        MetricSpec("auroc", "AUROC", "higher", metrics.auroc),
        MetricSpec("auprc", "AUPRC (average precision)", "higher", metrics.auprc),
        MetricSpec("sharpness", "sharpness (std of confidence)", "", lambda c, y: metrics.sharpness(c)),
        MetricSpec("aurc", "AURC", "lower", selective.aurc),
        MetricSpec("prr", "PRR", "higher", selective.prr),
        MetricSpec("alignment", "Alignment (EliCal)", "higher", selective.alignment),
    ]


ROUTING_METRICS = [
    MetricSpec("apgr", "APGR", "higher", routing.apgr),
    MetricSpec("cpt50", "CPT(50%) (share of strong calls)", "lower", partial(routing.cpt, target=0.5)),
    MetricSpec("cpt80", "CPT(80%) (share of strong calls)", "lower", partial(routing.cpt, target=0.8)),
]


@dataclass(frozen=True)
class MetricResult:
    """A metric's estimate, or (``estimate`` None) the reason it is undefined on this data."""

    spec: MetricSpec
    estimate: Estimate | None
    undefined_because: str = ""


def evaluate(
    confidences: ArrayLike,
    labels: ArrayLike,
    *,
    weak_correct: ArrayLike | None = None,
    strong_correct: ArrayLike | None = None,
    n_bins: int = metrics.DEFAULT_BINS,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> list[MetricResult]:
    """Every scorer metric (and, given both models' correctness, the routing ones) with bootstrap intervals.

    For routing, ``confidences`` are read as the confidence that the weak model is right, and ``labels``
    should be the weak model's correctness.
    """
    c = as_scores(confidences, name="confidences")
    y = as_labels(labels, len(c))
    runs: list[tuple[MetricSpec, tuple[ArrayLike, ...]]] = [(spec, (c, y)) for spec in scorer_metrics(n_bins)]
    if (weak_correct is None) != (strong_correct is None):
        raise ValueError("routing metrics need both weak_correct and strong_correct")
    if weak_correct is not None and strong_correct is not None:
        weak = as_unit_interval(weak_correct, len(c), name="weak_correct")
        strong = as_unit_interval(strong_correct, len(c), name="strong_correct")
        runs += [(spec, (c, weak, strong)) for spec in ROUTING_METRICS]
    results = []
    for spec, arrays in runs:
        try:
            estimate = bootstrap(spec.metric, *arrays, n_resamples=n_resamples, level=level, seed=seed)
        except ValueError as error:
            results.append(MetricResult(spec, None, str(error)))
        else:
            results.append(MetricResult(spec, estimate))
    return results


def write_report(
    out_dir: str | Path,
    confidences: ArrayLike,
    labels: ArrayLike,
    *,
    weak_correct: ArrayLike | None = None,
    strong_correct: ArrayLike | None = None,
    title: str = "Scorer report",
    n_bins: int = metrics.DEFAULT_BINS,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Path:
    """Write ``report.md`` with the metrics table and the PNGs it embeds into ``out_dir``; return its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    c = as_scores(confidences, name="confidences")
    y = as_labels(labels, len(c))
    results = evaluate(
        c,
        y,
        weak_correct=weak_correct,
        strong_correct=strong_correct,
        n_bins=n_bins,
        n_resamples=n_resamples,
        level=level,
        seed=seed,
    )
    noise_low, noise_high = calibrated_band(
        partial(metrics.ece, n_bins=n_bins), c, n_resamples=n_resamples, level=level, seed=seed
    )
    pictures = [
        ("Reliability diagram", plots.reliability_diagram(c, y, out / "reliability.png", n_bins=n_bins)),
        ("Risk-coverage", plots.risk_coverage_plot(c, y, out / "risk_coverage.png")),
    ]
    routing_defined = any(r.spec.key == "apgr" and r.estimate for r in results)
    if weak_correct is not None and strong_correct is not None and routing_defined:
        pictures.append(
            ("Routing cost-quality", plots.routing_plot(c, weak_correct, strong_correct, out / "routing.png"))
        )
    lines = [
        f"# {title}",
        "",
        f"{len(c)} items, {int(y.sum())} correct ({y.mean():.1%}). "
        f"Intervals: {level:.0%} percentile bootstrap, {n_resamples} resamples, seed {seed}. "
        "`n` and `positives` count the items and the correct ones (for routing rows, the weak model's).",
        "",
        f"**Calibration:** {plots.calibration_verdict(c, y)}. ECE {metrics.ece(c, y, n_bins):.4f}; "
        f"a perfectly calibrated scorer with these confidences would read {noise_low:.4f} to "
        f"{noise_high:.4f} ({level:.0%}) from sampling noise alone.",
        "",
        *_table(results, level),
        "",
    ]
    for caption, picture in pictures:
        lines += [f"## {caption}", "", f"![{caption}]({picture.name})", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    return report


def _table(results: list[MetricResult], level: float) -> list[str]:
    better = {"lower": "lower is better", "higher": "higher is better", "": ""}
    rows = [
        f"| metric | value | {level:.0%} interval | n | positives | |",
        "| --- | ---: | --- | ---: | ---: | --- |",
    ]
    for result in results:
        e, label = result.estimate, result.spec.label
        if e is None:
            rows.append(f"| {label} | undefined | {result.undefined_because} | | | |")
        else:
            rows.append(
                f"| {label} | {e.value:.4f} | [{e.low:.4f}, {e.high:.4f}] | {e.n} | {e.positives} "
                f"| {better[result.spec.better]} |"
            )
    return rows
