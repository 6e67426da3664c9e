"""Risk-coverage, AURC, PRR and EliCal's Alignment: known answers and error cases."""

import numpy as np
import pytest

from calibrators import alignment, alignment_threshold, aurc, prr, risk_coverage_curve, youden_threshold


def test_risk_coverage_known_answer() -> None:
    curve = risk_coverage_curve([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0])
    np.testing.assert_allclose(curve.coverage, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(curve.risk, [0.0, 0.5, 1 / 3, 0.5])
    assert curve.aurc == pytest.approx((0 + 0.5 + 1 / 3 + 0.5) / 4)


def test_tied_confidences_share_their_errors_whatever_the_input_order() -> None:
    # Two items tied at 0.9 (one wrong), then a correct one at 0.5.
    expected = [0.5, 0.5, 1 / 3]
    np.testing.assert_allclose(risk_coverage_curve([0.9, 0.9, 0.5], [1, 0, 1]).risk, expected)
    np.testing.assert_allclose(risk_coverage_curve([0.9, 0.5, 0.9], [0, 1, 1]).risk, expected)


def test_oracle_ordering_has_prr_one() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random(1000) < 0.6).astype(float)
    assert prr(labels, labels) == pytest.approx(1.0)
    # Any scorer that ranks every correct item above every wrong one is an oracle, too.
    assert prr(np.where(labels == 1, 0.6 + 0.3 * rng.random(1000), 0.5 * rng.random(1000)), labels) == 1.0


def test_random_ordering_has_prr_near_zero() -> None:
    rng = np.random.default_rng(1)
    values = [prr(rng.random(2000), (rng.random(2000) < 0.7).astype(float)) for _ in range(30)]
    assert abs(np.mean(values)) < 0.03
    assert max(abs(v) for v in values) < 0.2


def test_constant_scorer_has_prr_exactly_zero_and_reversed_oracle_is_negative() -> None:
    labels = np.r_[np.ones(30), np.zeros(20)]
    assert prr(np.full(50, 0.4), labels) == pytest.approx(0.0, abs=1e-12)
    assert aurc(np.full(50, 0.4), labels) == pytest.approx(0.4)
    assert prr(1 - labels, labels) < -0.9


def test_prr_needs_both_outcomes() -> None:
    with pytest.raises(ValueError, match="both correct and incorrect"):
        prr([0.1, 0.9], [1, 1])


def test_alignment_picks_threshold_on_first_fifth_and_scores_the_rest() -> None:
    # First 20% (10 items): correct above 0.5, wrong below, so the best grid threshold is 0.41 (first
    # threshold above the largest wrong confidence 0.4).
    head_scores = [0.1, 0.2, 0.3, 0.4, 0.4, 0.6, 0.7, 0.8, 0.9, 0.95]
    head_labels = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    rng = np.random.default_rng(2)
    tail_scores = rng.random(40)
    tail_labels = (tail_scores > 0.7).astype(float)
    scores, labels = np.r_[head_scores, tail_scores], np.r_[head_labels, tail_labels]
    assert alignment_threshold(scores, labels) == pytest.approx(0.41)
    expected = np.mean((tail_scores >= 0.41) == (tail_labels == 1))
    assert alignment(scores, labels) == pytest.approx(expected)
    assert alignment(scores, labels) < 1.0  # the tail's true cut is 0.7, which the head cannot see


def test_alignment_skips_thresholds_that_predict_one_class() -> None:
    # On the head every score is 0.5 or 0.6 and all are correct; thresholds <= 0.5 predict "correct" for all
    # and thresholds above 0.6 predict "wrong" for all, so only 0.51..0.60 count, and 0.51 is the first best.
    scores = np.r_[[0.5, 0.6] * 5, np.linspace(0, 1, 40)]
    labels = np.r_[np.ones(10), (np.linspace(0, 1, 40) > 0.3)]
    assert alignment_threshold(scores, labels) == pytest.approx(0.51)


def test_alignment_errors() -> None:
    with pytest.raises(ValueError, match="no threshold"):
        alignment(np.r_[np.full(10, 0.995), np.linspace(0, 1, 40)], np.r_[np.ones(10), np.zeros(40)])
    with pytest.raises(ValueError, match="too few"):
        alignment([0.2, 0.8, 0.4], [0, 1, 0])
    with pytest.raises(ValueError, match="calibration_fraction"):
        alignment(np.linspace(0, 1, 20), np.r_[np.zeros(10), np.ones(10)], calibration_fraction=1.0)


@pytest.mark.parametrize("metric", [aurc, prr, alignment])
def test_selective_metrics_reject_bad_input(metric) -> None:
    with pytest.raises(ValueError, match="empty"):
        metric([], [])
    with pytest.raises(ValueError, match="NaN"):
        metric([0.1, float("nan")], [0, 1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metric([0.1, 2.0], [0, 1])
    with pytest.raises(ValueError, match="items but the scores have"):
        metric([0.1, 0.2], [0, 1, 1])


def test_youdens_threshold_is_the_cut_that_best_separates_positives_from_negatives() -> None:
    confidences = np.array([0.05, 0.1, 0.2, 0.3, 0.35, 0.6, 0.7])
    correct = np.array([0, 0, 0, 1, 0, 1, 1], dtype=float)
    threshold, j = youden_threshold(confidences, correct)
    assert threshold == 0.3 and j == pytest.approx(1 - 1 / 4)
    with pytest.raises(ValueError, match="positive and negative"):
        youden_threshold(confidences, np.ones(7))
