"""Cost-quality curves between several priced targets, against brute force and known answers."""

import itertools

import numpy as np
import pytest

from calibrators import (
    CostQualityCurve,
    cost_at_quality,
    escalation_curve,
    oracle_curve,
    routing_curve,
    subsample,
    threshold_choice,
    threshold_curve,
)

COSTS = np.array([0.0, 1.0, 3.0])


def three_targets(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    correct = (rng.random((n, 3)) < [0.4, 0.6, 0.8]).astype(float)
    # One decimal, so many confidences tie within and across targets.
    confidences = np.round(rng.random((n, 3)), 1)
    return confidences, correct


def test_threshold_curve_matches_one_pass_per_threshold() -> None:
    confidences, correct = three_targets(300, 0)
    curve = threshold_curve(confidences, correct, COSTS)
    thresholds = np.unique(np.concatenate([[0.0], confidences.ravel(), [1.0 + 1e-9]]))
    rows = np.arange(300)
    expected_quality = [correct[rows, threshold_choice(confidences, t)].mean() for t in thresholds]
    expected_cost = [COSTS[threshold_choice(confidences, t)].mean() for t in thresholds]
    np.testing.assert_allclose(curve.quality, expected_quality, atol=1e-12)
    np.testing.assert_allclose(curve.cost, expected_cost, atol=1e-12)
    # Threshold 0 keeps everything on the cheapest target; above 1 every item takes its most likely one.
    assert curve.cost[0] == 0.0 and curve.quality[0] == correct[:, 0].mean()
    assert curve.quality[-1] == pytest.approx(correct[rows, np.argmax(confidences, axis=1)].mean())


def test_threshold_choice_falls_back_to_the_cheapest_most_likely_target() -> None:
    confidences = np.array([[0.2, 0.9, 0.5], [0.7, 0.3, 0.7], [0.1, 0.4, 0.4]])
    np.testing.assert_array_equal(threshold_choice(confidences, 0.6), [1, 0, 1])
    np.testing.assert_array_equal(threshold_choice(confidences, 0.95), [1, 0, 1])
    np.testing.assert_array_equal(threshold_choice(confidences, 0.0), [0, 0, 0])


def test_escalation_curve_is_the_routing_curve_on_a_cost_axis() -> None:
    rng = np.random.default_rng(1)
    weak = (rng.random(200) < 0.4).astype(float)
    strong = np.maximum(weak, rng.random(200) < 0.5).astype(float)
    scores = np.round(rng.random(200), 1)
    curve = escalation_curve(scores, weak, strong, 0.5, 2.5)
    np.testing.assert_allclose(curve.quality, routing_curve(scores, weak, strong).quality, atol=1e-12)
    np.testing.assert_allclose(curve.cost, 0.5 + 2.0 * np.arange(201) / 200)
    # Defined when the dear target is worse too, where PGR is not.
    worse = escalation_curve(scores, strong, weak, 0.5, 2.5)
    assert worse.quality[0] == strong.mean() and worse.quality[-1] == weak.mean()


def test_oracle_curve_is_above_every_deterministic_policy() -> None:
    _, correct = three_targets(5, 2)
    curve = oracle_curve(correct, COSTS)
    assert curve.quality[-1] == correct.max(axis=1).mean()
    for choice in itertools.product(range(3), repeat=5):
        cost = COSTS[list(choice)].mean()
        quality = correct[np.arange(5), list(choice)].mean()
        # Beyond the oracle's last point no policy is more accurate, so its curve stays level there.
        assert quality <= np.interp(cost, curve.cost, curve.quality) + 1e-12


def test_oracle_curve_known_answer() -> None:
    # Row 0: cheapest right; row 1: only the dearest; row 2: the middle and the dearest; row 3: none.
    correct = np.array([[1, 0, 1], [0, 0, 1], [0, 1, 1], [0, 0, 0]], dtype=float)
    curve = oracle_curve(correct, COSTS)
    np.testing.assert_allclose(curve.cost, [0.0, 0.25, 1.0])
    np.testing.assert_allclose(curve.quality, [0.25, 0.5, 0.75])


def test_cost_at_quality_interpolates_and_says_never() -> None:
    curve = CostQualityCurve(np.array([0.0, 1.0, 2.0, 3.0]), np.array([0.5, 0.7, 0.6, 0.9]))
    assert cost_at_quality(curve, 0.6) == pytest.approx(0.5)
    assert cost_at_quality(curve, 0.8) == pytest.approx(2.0 + 2 / 3)
    assert cost_at_quality(curve, 0.4) == 0.0
    assert cost_at_quality(curve, 0.95) is None


def test_subsample_keeps_both_ends() -> None:
    indices = subsample(20_001)
    assert len(indices) == 101 and indices[0] == 0 and indices[-1] == 20_000
    np.testing.assert_array_equal(subsample(5), np.arange(5))
