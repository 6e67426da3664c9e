"""PNG pictures of a scorer: reliability diagram, risk-coverage plot, routing cost-quality plot.

matplotlib is imported inside the functions (so ``import calibrators`` stays fast) and drawn through the
Agg canvas directly, without pyplot, so nothing needs a display and no global backend is switched.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from calibrators.metrics import DEFAULT_BINS, ece, mce, reliability_bins
from calibrators.routing import apgr, cpt, routing_curve
from calibrators.selective import prr, risk_coverage_curve
from calibrators.validation import FloatArray, as_labels, as_scores

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Bins with fewer items than this are drawn faded: their accuracy is too noisy to read a gap from.
FEW_ITEMS = 10
OVERCONFIDENT, UNDERCONFIDENT, NEUTRAL = "#d62728", "#ff9f1c", "#4c72b0"
# (fill, hatch and edge) of a bin's gap bar, keyed by "is the bin overconfident". An underconfident gap lies
# inside the accuracy bar, so it is hatched over it without a fill that would hide where accuracy ends.
GAP_STYLE = {True: ("#f4a6a6", OVERCONFIDENT), False: ("none", UNDERCONFIDENT)}


def reliability_diagram(
    confidences: ArrayLike,
    labels: ArrayLike,
    path: str | Path,
    *,
    n_bins: int = DEFAULT_BINS,
    title: str = "Reliability diagram",
) -> Path:
    """Accuracy per equal-width confidence bin against the diagonal, with each bin's gap and item count,
    and below it the histogram of confidences."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    c = as_scores(confidences, name="confidences")
    y = as_labels(labels, len(c))
    bins = reliability_bins(c, y, n_bins)
    width = 1.0 / n_bins
    centers = bins.edges[:-1] + width / 2

    fig = figure(7.0, 8.0)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], "k--", linewidth=1)
    for center, acc, conf, count in zip(centers, bins.accuracy, bins.confidence, bins.counts, strict=True):
        if count == 0:
            continue
        alpha = 1.0 if count >= FEW_ITEMS else 0.35
        fill, edge = GAP_STYLE[bool(conf > acc)]
        top.bar(center, acc, width * 0.9, color=NEUTRAL, alpha=alpha)
        top.bar(
            center,
            conf - acc,
            width * 0.9,
            bottom=acc,
            color=fill,
            edgecolor=edge,
            hatch="//",
            linewidth=1.0,
            alpha=alpha,
        )
        top.text(center, max(acc, conf) + 0.015, str(count), ha="center", va="bottom", fontsize=7)
    top.legend(
        handles=[
            Line2D([], [], color="black", linestyle="--", label="perfect calibration"),
            Patch(color=NEUTRAL, label="accuracy in bin"),
            Patch(
                facecolor=GAP_STYLE[True][0],
                edgecolor=OVERCONFIDENT,
                hatch="//",
                label="gap, overconfident: mean confidence above accuracy",
            ),
            Patch(
                facecolor=NEUTRAL,
                edgecolor=UNDERCONFIDENT,
                hatch="//",
                label="gap, underconfident: mean confidence below accuracy",
            ),
        ],
        loc="upper left",
        fontsize=8,
    )
    top.set(
        ylim=(0, 1.08),
        xlim=(0, 1),
        ylabel="accuracy (fraction correct)",
        title=f"{title}\n{calibration_verdict(c, y)}",
    )
    top.text(
        0.98,
        0.03,
        f"ECE {ece(c, y, n_bins):.3f}   MCE {mce(c, y, n_bins):.3f}\n"
        f"n = {len(c)}, correct = {int(y.sum())}\nnumbers: items per bin"
        f" (faded: < {FEW_ITEMS})",
        transform=top.transAxes,
        ha="right",
        va="bottom",
        fontsize=8,
        bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.9},
    )

    bottom.bar(centers, bins.counts, width * 0.9, color="grey")
    bottom.axvline(float(c.mean()), color=OVERCONFIDENT, label=f"mean confidence {c.mean():.2f}")
    bottom.axvline(float(y.mean()), color=NEUTRAL, linestyle=":", label=f"accuracy {y.mean():.2f}")
    bottom.set(xlabel="confidence", ylabel="items")
    bottom.legend(fontsize=8)
    return save(fig, path)


def risk_coverage_plot(
    confidences: ArrayLike, labels: ArrayLike, path: str | Path, *, title: str = "Risk-coverage"
) -> Path:
    """Error rate among the answers kept when only the most confident share is kept, against an oracle
    ranking and a random one."""
    c = as_scores(confidences, name="confidences")
    y = as_labels(labels, len(c))
    curve = risk_coverage_curve(c, y)
    oracle = risk_coverage_curve(y, y)
    error_rate = 1.0 - float(y.mean())
    both = 0.0 < error_rate < 1.0
    subtitle = (
        f"PRR {prr(c, y):.2f}  (1 = oracle ranking, 0 = random)"
        if both
        else "PRR undefined: every label is the same"
    )

    fig = figure(7.0, 5.0)
    ax = fig.subplots()
    ax.plot(curve.coverage, curve.risk, color=NEUTRAL, linewidth=2, label=f"scorer  (AURC {curve.aurc:.3f})")
    ax.plot(oracle.coverage, oracle.risk, "--", color="#2ca02c", label=f"oracle  (AURC {oracle.aurc:.3f})")
    ax.axhline(error_rate, color="grey", linestyle=":", label=f"random  (AURC {error_rate:.3f})")
    ax.fill_between(
        curve.coverage,
        oracle.risk,
        curve.risk,
        color=OVERCONFIDENT,
        alpha=0.12,
        label="excess risk over the oracle",
    )
    ax.set(
        xlim=(0, 1),
        ylim=(0, max(float(curve.risk.max()), error_rate) * 1.1 + 0.01),
        xlabel="coverage (share of items answered, most confident first)",
        ylabel="risk (error rate among answered)",
        title=f"{title}\n{subtitle}",
    )
    ax.legend(fontsize=8)
    return save(fig, path)


def routing_plot(
    scores: ArrayLike,
    weak_correct: ArrayLike,
    strong_correct: ArrayLike,
    path: str | Path,
    *,
    title: str = "Routing cost-quality",
) -> Path:
    """Quality against the share of calls sent to the strong model (least confident first), with random
    and oracle routing and the CPT(50%) and CPT(80%) points."""
    curve = routing_curve(scores, weak_correct, strong_correct)
    weak = np.asarray(weak_correct, dtype=np.float64)
    strong = np.asarray(strong_correct, dtype=np.float64)
    # Oracle routing sends the items the strong model gains most on first; map the gain into [0, 1].
    oracle = routing_curve((1.0 + weak - strong) / 2, weak, strong)
    share = 100 * curve.strong_share

    fig = figure(7.0, 5.0)
    ax = fig.subplots()
    ax.plot(
        share,
        curve.quality,
        color=NEUTRAL,
        linewidth=2,
        label=f"router  (APGR {apgr(scores, weak, strong):.3f})",
    )
    ax.plot(
        [0, 100],
        [curve.weak_quality, curve.strong_quality],
        ":",
        color="grey",
        label="random routing  (APGR 0.500)",
    )
    ax.plot(share, oracle.quality, "--", color="#2ca02c", label="oracle routing")
    ax.axhline(
        curve.weak_quality, color=UNDERCONFIDENT, linewidth=1, label=f"weak only {curve.weak_quality:.3f}"
    )
    ax.axhline(
        curve.strong_quality,
        color=OVERCONFIDENT,
        linewidth=1,
        label=f"strong only {curve.strong_quality:.3f}",
    )
    for target in (0.5, 0.8):
        at = cpt(scores, weak, strong, target)
        quality = curve.weak_quality + target * (curve.strong_quality - curve.weak_quality)
        ax.plot(100 * at, quality, "o", color="black")
        ax.annotate(
            f"CPT({target:.0%}) = {at:.1%} strong calls",
            (100 * at, quality),
            textcoords="offset points",
            xytext=(8, -12),
            fontsize=8,
        )
    ax.set(
        xlim=(0, 100),
        xlabel="strong-model calls (% of items, cost)",
        ylabel="quality (mean correctness)",
        title=f"{title}\nn = {len(weak)}; the higher and further left the router curve, the better",
    )
    ax.legend(fontsize=8, loc="lower right")
    return save(fig, path)


def calibration_verdict(c: FloatArray, y: FloatArray) -> str:
    """One line saying whether mean confidence is above, below or within noise of the accuracy."""
    gap = float(c.mean() - y.mean())
    # Two standard errors of the accuracy: a smaller mean gap is indistinguishable from sampling noise.
    noise = 2 * np.sqrt(max(y.mean() * (1 - y.mean()), 1e-12) / len(y))
    if gap > noise:
        return f"overconfident: mean confidence {c.mean():.2f} but only {y.mean():.2f} correct"
    if gap < -noise:
        return f"underconfident: mean confidence {c.mean():.2f} but {y.mean():.2f} correct"
    return f"mean confidence {c.mean():.2f} matches accuracy {y.mean():.2f}; check the bins for local gaps"


def figure(width: float, height: float) -> Figure:
    """A blank figure (sizes in inches) on its own Agg canvas: no pyplot, no display, no global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` as PNG and return the path, for callers that link to it."""
    path = Path(path)
    fig.savefig(path, format="png")
    return path
