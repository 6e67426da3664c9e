"""Seeded bootstrap intervals with counts, and the ECE of perfectly calibrated data."""

from functools import partial

import numpy as np
import pytest

from calibrators import Estimate, auroc, bootstrap, calibrated_band, cpt, ece


def calibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    confidences = rng.random(n)
    return confidences, (rng.random(n) < confidences).astype(float)


def test_perfectly_calibrated_data_has_ece_near_zero_within_its_interval() -> None:
    confidences, labels = calibrated(20_000, 0)
    estimate = bootstrap(ece, confidences, labels, n_resamples=200, seed=1)
    assert estimate.low <= estimate.value <= estimate.high
    # ECE is biased upwards by sampling noise, so the interval sits just above 0 rather than around it.
    assert estimate.high < 0.02
    overconfident = bootstrap(ece, np.sqrt(confidences), labels, n_resamples=200, seed=1)
    assert overconfident.low > 5 * estimate.high


def test_calibrated_band_separates_noise_from_miscalibration() -> None:
    confidences, labels = calibrated(5000, 9)
    low, high = calibrated_band(ece, confidences, n_resamples=200, seed=2)
    assert 0.0 < low < ece(confidences, labels) < high < 0.05
    assert (
        ece(np.sqrt(confidences), labels) > 3 * calibrated_band(ece, np.sqrt(confidences), n_resamples=200)[1]
    )
    assert calibrated_band(ece, confidences, n_resamples=50, seed=3) == calibrated_band(
        ece, confidences, n_resamples=50, seed=3
    )


def test_same_seed_same_interval_and_other_seed_differs() -> None:
    confidences, labels = calibrated(300, 2)
    first = bootstrap(auroc, confidences, labels, n_resamples=100, seed=7)
    assert bootstrap(auroc, confidences, labels, n_resamples=100, seed=7) == first
    assert bootstrap(auroc, confidences, labels, n_resamples=100, seed=8) != first


def test_counts_come_with_the_rate() -> None:
    estimate = bootstrap(ece, [0.9, 0.8, 0.3, 0.6], [1, 1, 0, 1], n_resamples=50, level=0.9)
    assert (estimate.n, estimate.positives, estimate.level) == (4, 3, 0.9)
    assert estimate.to_dict()["positives"] == 3
    assert str(estimate).endswith("(n=4, positives=3)")


def test_interval_matches_percentiles_of_resampled_metric() -> None:
    confidences, labels = calibrated(200, 3)
    estimate = bootstrap(ece, confidences, labels, n_resamples=300, seed=4, level=0.8)
    rng = np.random.default_rng(4)
    values = []
    for _ in range(300):
        rows = rng.integers(0, 200, 200)
        values.append(ece(confidences[rows], labels[rows]))
    assert (estimate.low, estimate.high) == pytest.approx(tuple(np.quantile(values, [0.1, 0.9])), rel=1e-12)
    assert estimate.value == ece(confidences, labels) and estimate.resamples == 300


def test_resamples_where_the_metric_is_undefined_are_skipped_and_counted() -> None:
    # 30 items, 2 positives: (28/30)^30, about 1 in 8, of the resamples has no positive: AUROC is undefined.
    labels = np.r_[1.0, 1.0, np.zeros(28)]
    estimate = bootstrap(auroc, np.linspace(0, 1, 30), labels, n_resamples=400, seed=0)
    assert 300 < estimate.resamples < 400

    def needs_distinct_scores(scores: np.ndarray, labels: np.ndarray) -> float:
        if len(np.unique(scores)) < len(scores):
            raise ValueError("tied scores")
        return 0.0

    with pytest.raises(ValueError, match="undefined on"):
        bootstrap(needs_distinct_scores, np.linspace(0, 1, 30), labels, n_resamples=50)


def test_extra_arrays_are_resampled_with_their_rows() -> None:
    rng = np.random.default_rng(5)
    weak = (rng.random(400) < 0.5).astype(float)
    strong = np.maximum(weak, rng.random(400) < 0.5).astype(float)
    scores = np.clip(weak * 0.6 + 0.4 * rng.random(400), 0, 1)
    estimate = bootstrap(partial(cpt, target=0.5), scores, weak, strong, n_resamples=100)
    assert isinstance(estimate, Estimate) and estimate.low <= estimate.value <= estimate.high
    assert estimate.positives == int(weak.sum())
    with pytest.raises(ValueError, match="extra array 0"):
        bootstrap(partial(cpt, target=0.5), scores, weak, strong[:10])


def test_bootstrap_argument_errors() -> None:
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap(ece, [0.5], [1], n_resamples=0)
    with pytest.raises(ValueError, match="level"):
        bootstrap(ece, [0.5], [1], level=1.0)
    with pytest.raises(ValueError, match="empty"):
        bootstrap(ece, [], [])
    with pytest.raises(ValueError, match="level"):
        calibrated_band(ece, [0.5], level=0.0)
