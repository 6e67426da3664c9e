"""The routing evaluation behind `router eval-routing`, against answers worked out here by hand."""

import json
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from calibrators import apgr
from train.routing_eval import evaluate_routing, routing_evaluation
from train.routing_report import write_report

RESAMPLES = 60
# Few resamples keep the tests fast; the point values do not depend on them.
evaluate = partial(evaluate_routing, n_resamples=RESAMPLES, seed=1)


def two_targets(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Independent weak (45%) and strong (70%) answers: some rows only the weak one gets right."""
    rng = np.random.default_rng(seed)
    return (rng.random(n) < 0.45).astype(float), (rng.random(n) < 0.7).astype(float)


def run_two(
    weak: np.ndarray, strong: np.ndarray, confidences: dict[str, np.ndarray], **kwargs: Any
) -> dict[str, Any]:
    correct = {"local": weak, "cloud": strong}
    return evaluate(correct, {"local": 0.0, "cloud": 0.002}, confidences, ["s"] * len(weak), **kwargs)


def noisy(weak: np.ndarray, strong: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "local": np.clip(0.3 + 0.4 * weak + rng.normal(0, 0.3, len(weak)), 0, 1),
        "cloud": np.clip(0.4 + 0.3 * strong + rng.normal(0, 0.3, len(weak)), 0, 1),
    }


def oracle_apgr(weak: np.ndarray, strong: np.ndarray) -> float:
    """Gains first (PGR up to g / D), then rows where both agree (flat), then losses (down to 1)."""
    n = len(weak)
    g = float(np.sum((strong == 1) & (weak == 0)))
    lost = float(np.sum((weak == 1) & (strong == 0)))
    top = g / (g - lost)
    return (g * top / 2 + (n - g - lost) * top + lost * (top + 1) / 2) / n


def truth_cascade_apgr(weak: np.ndarray, strong: np.ndarray) -> float:
    """The weak model's own correctness as its confidence: every wrong row (a tie) first, then the rest."""
    n, wrong = len(weak), float(np.sum(weak == 0))
    g = float(np.sum((strong == 1) & (weak == 0)))
    top = g / (g - np.sum((weak == 1) & (strong == 0)))
    return (wrong * top / 2 + (n - wrong) * (top + 1) / 2) / n


def dominated(metrics: dict[str, Any]) -> None:
    """Every strategy's curve lies on or under the oracle's (flat beyond the oracle's last point)."""
    oracle = metrics["strategies"]["oracle"]["cost_quality"]
    for name, entry in metrics["strategies"].items():
        curve = entry["cost_quality"]
        ceiling = np.interp(curve["cost_per_1k"], oracle["cost_per_1k"], oracle["accuracy"])
        assert np.all(np.asarray(curve["accuracy"]) <= ceiling + 1e-6), name


def test_oracle_reaches_the_analytic_maximum_and_dominates() -> None:
    weak, strong = two_targets(1000, 0)
    metrics = run_two(weak, strong, noisy(weak, strong, 1))
    oracle = metrics["strategies"]["oracle"]
    assert oracle["apgr"]["value"] == pytest.approx(oracle_apgr(weak, strong), abs=1e-12)
    assert oracle["apgr"]["value"] > 1.0  # losses exist, so the best router beats the strong model
    assert all(
        s["apgr"]["value"] < oracle["apgr"]["value"]
        for s in metrics["strategies"].values()
        if s is not oracle
    )
    # 100 rows: the JSON keeps every one of the 101 curve points, so the check is exact.
    small_weak, small_strong = two_targets(100, 2)
    dominated(run_two(small_weak, small_strong, noisy(small_weak, small_strong, 3)))


def test_random_routing_is_the_straight_line_with_apgr_one_half() -> None:
    weak, strong = two_targets(800, 4)
    random = run_two(weak, strong, noisy(weak, strong, 5))["strategies"]["random"]
    e = random["apgr"]
    assert e["value"] == pytest.approx(0.5, abs=1e-12) and e["low"] <= 0.5 <= e["high"]
    assert random["cpt50"]["value"] == pytest.approx(0.5) and random["cpt80"]["value"] == pytest.approx(0.8)
    share = np.asarray(random["pgr_curve"]["strong_share"])
    expected = weak.mean() + share * (strong.mean() - weak.mean())
    np.testing.assert_allclose(random["pgr_curve"]["quality"], expected, atol=1e-6)


def test_a_scorer_that_knows_the_truth_beats_cascade_and_random() -> None:
    weak, strong = two_targets(1000, 6)
    metrics = run_two(weak, strong, {"local": weak, "cloud": strong})
    s = metrics["strategies"]
    assert s["scorer"]["apgr"]["value"] == pytest.approx(oracle_apgr(weak, strong), abs=1e-12)
    assert s["cascade"]["apgr"]["value"] == pytest.approx(truth_cascade_apgr(weak, strong), abs=1e-12)
    assert s["scorer"]["apgr"]["value"] > s["cascade"]["apgr"]["value"] > s["cascade"]["apgr"]["low"] > 0.5
    assert s["scorer"]["cpt50"]["value"] < s["cascade"]["cpt50"]["value"] < s["random"]["cpt50"]["value"]
    assert s["scorer"]["cost_at_95"] < s["cascade"]["cost_at_95"] < s["random"]["cost_at_95"]
    gap = metrics["differences"]["scorer - cascade"]["apgr"]
    assert gap["value"] == pytest.approx(s["scorer"]["apgr"]["value"] - s["cascade"]["apgr"]["value"])
    assert gap["low"] > 0 and gap["resamples"] == RESAMPLES


def crossing_cost(costs: list[float], accuracies: list[float], level: float) -> float:
    """Where a polyline first reaches ``level``, walking its points in order (costs only rise here)."""
    for i in range(1, len(costs)):
        if accuracies[i] >= level:
            a0, a1 = accuracies[i - 1], accuracies[i]
            return costs[i - 1] + (level - a0) / (a1 - a0) * (costs[i] - costs[i - 1])
    raise AssertionError("never reached")


def test_three_targets_oracle_then_truth_scorer_then_cascade() -> None:
    rng = np.random.default_rng(7)
    n = 1000
    correct = {
        "tiny": (rng.random(n) < 0.4).astype(float),
        "mid": (rng.random(n) < 0.75).astype(float),
        "big": (rng.random(n) < 0.85).astype(float),
    }
    costs = {"tiny": 0.0, "mid": 0.0005, "big": 0.002}
    metrics = evaluate(correct, costs, dict(correct), ["s"] * n)
    at = {name: s["cost_at_95"] for name, s in metrics["strategies"].items()}
    assert at["oracle"] <= at["scorer"] <= at["cascade"] and at["scorer"] < 0.8 * at["cascade"]
    assert "apgr" not in metrics["strategies"]["scorer"] and "differences" not in metrics

    y = np.column_stack(list(correct.values()))
    price = np.array(list(costs.values())) * 1000
    level = 0.95 * y.mean(axis=0).max()
    # Confidences that are the answers: below threshold 1 everything stays on tiny; at 1 each row takes
    # its cheapest correct target, or tiny when none is; a straight line between the two.
    chosen = np.where(y.any(axis=1), np.argmax(y == 1, axis=1), 0)
    end_cost, end_accuracy = price[chosen].mean(), y.any(axis=1).mean()
    assert at["scorer"] == pytest.approx(
        crossing_cost([0.0, end_cost], [y[:, 0].mean(), end_accuracy], level)
    )
    # The cascade sends tiny's wrong rows (a tie) to big first, then its right ones.
    wrong = y[:, 0] == 0
    mid_cost = wrong.mean() * price[2]
    mid_accuracy = y[:, 0].mean() + np.sum(wrong & (y[:, 2] == 1)) / n
    assert at["cascade"] == pytest.approx(
        crossing_cost([0.0, mid_cost, price[2]], [y[:, 0].mean(), mid_accuracy, y[:, 2].mean()], level)
    )
    # The rule's t follows the quantiles of tiny's confidences (here its 0/1 answers, 40% ones).
    rules = metrics["strategies"]["scorer"]["thresholds"]
    assert [r["threshold"] for r in rules] == [0.0, 0.0, 0.0, 1.0, 1.0]
    assert rules[0]["accuracy"] == pytest.approx(y[:, 0].mean()) and rules[0]["cost_per_1k"] == 0
    threshold = rules[3]
    assert threshold["accuracy"] == pytest.approx(end_accuracy)
    assert threshold["cost_per_1k"] == pytest.approx(end_cost)
    assert threshold["share"]["mid"] == pytest.approx(np.mean(chosen == 1))
    small = {name: values[:100] for name, values in correct.items()}
    noise = {name: np.clip(values + rng.normal(0, 0.4, 100), 0, 1) for name, values in small.items()}
    dominated(evaluate(small, costs, noise, ["s"] * 100))


def test_nprob_is_judged_on_the_rows_that_have_it() -> None:
    weak, strong = two_targets(600, 8)
    scores = np.random.default_rng(9).random(600)
    nprob = np.where(np.arange(600) % 3 == 0, np.nan, scores)
    metrics = run_two(weak, strong, noisy(weak, strong, 10), nprob=nprob)
    rows = ~np.isnan(nprob)
    entry = metrics["strategies"]["nprob"]
    assert entry["n"] == 400 == metrics["differences"]["scorer - nprob"]["n"]
    assert entry["apgr"]["value"] == pytest.approx(apgr(scores[rows], weak[rows], strong[rows]))
    assert entry["apgr"]["n"] == 400 and entry["apgr"]["positives"] == int(weak[rows].sum())
    assert (
        "nprob"
        not in run_two(weak, strong, noisy(weak, strong, 10), nprob=np.full(600, np.nan))["strategies"]
    )


def test_strong_not_better_leaves_pgr_undefined_and_costs_computed() -> None:
    weak, strong = two_targets(400, 11)
    metrics = run_two(strong, weak, noisy(strong, weak, 12))  # the cheap target is now the better one
    assert "note" in metrics
    for entry in metrics["strategies"].values():
        assert entry["apgr"] is None and entry["cpt50"] is None and entry["pgr_curve"] is None
        assert "note" in entry
        # The cheap target alone is the best single target, so 95% of it costs nothing.
        assert entry["cost_at_95"] == 0.0 and len(entry["cost_quality"]["accuracy"]) == 101
    assert metrics["differences"]["scorer - cascade"]["apgr"] is None


def test_targets_are_sorted_by_price_and_ties_keep_the_given_order() -> None:
    weak, strong = two_targets(300, 13)
    confidences = noisy(weak, strong, 14)
    forward = run_two(weak, strong, confidences)
    backward = evaluate(
        {"cloud": strong, "local": weak},
        {"cloud": 0.002, "local": 0.0},
        confidences,
        ["s"] * 300,
    )
    assert backward["cheapest_first"] == ["local", "cloud"]
    assert backward["strategies"] == forward["strategies"]
    tied = evaluate(
        {"cloud": strong, "local": weak},
        {"cloud": 0.0, "local": 0.0},
        confidences,
        ["s"] * 300,
    )
    assert tied["cheapest_first"] == ["cloud", "local"]


def test_per_source_breakdown() -> None:
    weak, strong = two_targets(600, 15)
    strong[:200] = 0.0  # source "a": the strong target is useless there
    sources = ["a"] * 200 + ["b"] * 400
    metrics = evaluate(
        {"local": weak, "cloud": strong},
        {"local": 0.0, "cloud": 0.002},
        noisy(weak, strong, 16),
        sources,
    )
    a, b = metrics["by_source"]["a"], metrics["by_source"]["b"]
    assert (a["n"], b["n"]) == (200, 400)
    assert a["targets"]["cloud"] == {"accuracy": 0.0, "positives": 0, "auroc": None}  # one class: no AUROC
    assert b["targets"]["local"]["positives"] == int(weak[200:].sum())
    assert all(s["apgr"] is None for s in a["strategies"].values())
    assert b["strategies"]["oracle"]["apgr"] == pytest.approx(oracle_apgr(weak[200:], strong[200:]))


def test_per_family_breakdown_says_where_no_target_is_ever_right(tmp_path: Path) -> None:
    weak, strong = two_targets(600, 17)
    weak[400:], strong[400:] = 0.0, 0.0  # "math": neither model is ever right
    families = ["qa"] * 400 + ["math"] * 200
    evaluation = routing_evaluation(
        {"local": weak, "cloud": strong},
        {"local": 0.0, "cloud": 0.002},
        noisy(weak, strong, 18),
        ["s"] * 600,
        n_resamples=RESAMPLES,
        families=families,
    )
    qa, math = evaluation.metrics["by_family"]["qa"], evaluation.metrics["by_family"]["math"]
    assert (qa["n"], math["n"]) == (400, 200) and "note" not in qa
    assert math["note"] == "no target is ever right on these rows: no ratio"
    assert qa["strategies"]["oracle"]["apgr"] == pytest.approx(oracle_apgr(weak[:400], strong[:400]))
    write_report(tmp_path, evaluation)
    report = (tmp_path / "report.md").read_text()
    assert "## By family" in report and "| math | 200 | no target is ever right on these rows" in report


def test_writes_json_report_and_pictures(tmp_path: Path) -> None:
    weak, strong = two_targets(1500, 17)
    notes = ["held-out test rows of split seed 0"]
    evaluation = routing_evaluation(
        {"local": weak, "cloud": strong},
        {"local": 0.0, "cloud": 0.002},
        noisy(weak, strong, 18),
        ["s"] * 1500,
        nprob=np.random.default_rng(19).random(1500),
        n_resamples=RESAMPLES,
        seed=1,
        notes=notes,
    )
    assert not list(tmp_path.iterdir())  # evaluating writes nothing; the report does
    write_report(tmp_path, evaluation)
    metrics = evaluation.metrics
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert len(metrics["strategies"]["scorer"]["cost_quality"]["cost_per_1k"]) == 101
    assert len(metrics["strategies"]["scorer"]["pgr_curve"]["pgr"]) == 101
    report = (tmp_path / "report.md").read_text()
    assert notes[0] in report and "| scorer | 1500 |" in report and "![" in report
    for picture in ("pgr.png", "cost_quality.png"):
        assert (tmp_path / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rng = np.random.default_rng(20)
    three = {name: (rng.random(200) < p).astype(float) for name, p in (("a", 0.3), ("b", 0.6), ("c", 0.8))}
    write_report(
        tmp_path / "k3",
        routing_evaluation(
            three, {"a": 0.0, "b": 1e-3, "c": 3e-3}, dict(three), ["s"] * 200, n_resamples=RESAMPLES, seed=1
        ),
    )
    assert (tmp_path / "k3" / "cost_quality.png").exists() and not (tmp_path / "k3" / "pgr.png").exists()


def test_bad_inputs_raise() -> None:
    weak, strong = two_targets(50, 21)
    confidences = noisy(weak, strong, 22)
    good: dict[str, Any] = {
        "correct": {"local": weak, "cloud": strong},
        "costs": {"local": 0.0, "cloud": 0.002},
        "confidences": confidences,
        "sources": ["s"] * 50,
        "nprob": np.full(50, 0.5),
    }
    cases: list[tuple[str, dict[str, Any]]] = [
        ("at least two targets", {"correct": {"local": weak}, "costs": {"local": 0.0}}),
        ("same number of rows", {"correct": {"local": weak, "cloud": strong[:-1]}}),
        ("same number of rows", {"confidences": confidences | {"local": confidences["local"][:-1]}}),
        ("same number of rows", {"sources": ["s"] * 49}),
        ("same number of rows", {"nprob": np.full(51, 0.5)}),
        ("costs must name the same targets", {"costs": {"local": 0.0}}),
        ("confidences must name the same targets", {"confidences": {"local": weak, "other": strong}}),
        ("at least 0", {"costs": {"local": 0.0, "cloud": -1.0}}),
        ("at least 0", {"costs": {"local": 0.0, "cloud": float("nan")}}),
        (r"in \[0, 1\]", {"confidences": confidences | {"cloud": confidences["cloud"] + 2}}),
        ("NaN", {"correct": {"local": weak, "cloud": strong * np.nan}}),
        ("nprob must be probabilities", {"nprob": np.full(50, 3.0)}),
    ]
    for message, change in cases:
        with pytest.raises(ValueError, match=message):
            evaluate(**(good | change))
    evaluate(**good)  # and the unchanged inputs are fine
