"""RouteLLM's PGR curve, APGR and CPT: known answers and error cases."""

import numpy as np
import pytest

from calibrators import apgr, cpt, routing_curve


def models(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    weak = (rng.random(n) < 0.5).astype(float)
    strong = np.maximum(weak, rng.random(n) < 0.6).astype(float)
    return weak, strong


def test_curve_runs_from_weak_to_strong_quality() -> None:
    weak, strong = models(500, 0)
    curve = routing_curve(np.random.default_rng(1).random(500), weak, strong)
    assert curve.strong_share[0] == 0.0 and curve.strong_share[-1] == 1.0 and len(curve.quality) == 501
    assert curve.quality[0] == weak.mean() and curve.pgr[0] == 0.0
    assert curve.quality[-1] == strong.mean() and curve.pgr[-1] == 1.0


def test_router_sending_everything_to_the_strong_model_gets_its_accuracy() -> None:
    weak, strong = models(300, 2)
    # The weak model is never trusted: every score is 0, so at 100% strong calls every item is routed.
    curve = routing_curve(np.zeros(300), weak, strong)
    assert curve.quality[-1] == strong.mean()
    # And a router whose strong share is 100% equals the strong model, whatever its scores.
    for scores in (np.ones(300), np.random.default_rng(3).random(300)):
        assert routing_curve(scores, weak, strong).quality[-1] == pytest.approx(strong.mean(), abs=1e-15)


def test_known_answer_small_case() -> None:
    # Items: weak/strong correctness and the router's confidence in the weak model.
    scores = [0.1, 0.2, 0.8, 0.9]
    weak = [0, 0, 1, 1]
    strong = [1, 0, 1, 1]
    curve = routing_curve(scores, weak, strong)
    np.testing.assert_allclose(curve.quality, [0.5, 0.75, 0.75, 0.75, 0.75])
    np.testing.assert_allclose(curve.pgr, [0, 1, 1, 1, 1])
    assert apgr(scores, weak, strong) == pytest.approx((0.5 + 1 + 1 + 1) / 4)
    assert cpt(scores, weak, strong, 0.5) == pytest.approx(0.125)
    assert cpt(scores, weak, strong, 1.0) == pytest.approx(0.25)


def test_random_router_has_apgr_one_half_and_oracle_more() -> None:
    weak, strong = models(2000, 4)
    rng = np.random.default_rng(5)
    values = [apgr(rng.random(2000), weak, strong) for _ in range(20)]
    assert np.mean(values) == pytest.approx(0.5, abs=0.02)
    assert apgr(np.full(2000, 0.5), weak, strong) == pytest.approx(0.5, abs=1e-12)
    oracle = (1 + weak - strong) / 2
    assert apgr(oracle, weak, strong) > 0.75
    assert cpt(oracle, weak, strong, 0.5) < cpt(np.full(2000, 0.5), weak, strong, 0.5) == pytest.approx(0.5)


def test_cpt_is_monotone_in_target() -> None:
    weak, strong = models(1000, 6)
    scores = np.clip(weak * 0.5 + np.random.default_rng(7).random(1000) * 0.6, 0, 1)
    shares = [cpt(scores, weak, strong, t) for t in (0.2, 0.5, 0.8, 1.0)]
    assert shares == sorted(shares) and shares[0] > 0 and shares[-1] <= 1


def test_graded_quality_is_accepted() -> None:
    curve = routing_curve([0.2, 0.8], [0.25, 0.5], [0.75, 0.5])
    np.testing.assert_allclose(curve.quality, [0.375, 0.625, 0.625])


def test_routing_errors() -> None:
    with pytest.raises(ValueError, match="strong model better"):
        routing_curve([0.2, 0.8], [1, 0], [1, 0])
    with pytest.raises(ValueError, match="strong model better"):
        apgr([0.2, 0.8], [1, 1], [1, 0])
    with pytest.raises(ValueError, match="target"):
        cpt([0.2, 0.8], [0, 0], [1, 1], target=0.0)
    with pytest.raises(ValueError, match="weak_correct has 1 items"):
        routing_curve([0.2, 0.8], [1], [1, 1])
    with pytest.raises(ValueError, match=r"strong_correct must lie in \[0, 1\]"):
        routing_curve([0.2, 0.8], [0, 0], [1, 2])
    with pytest.raises(ValueError, match="NaN"):
        routing_curve([0.2, float("nan")], [0, 0], [1, 1])
    with pytest.raises(ValueError, match="empty"):
        routing_curve([], [], [])
