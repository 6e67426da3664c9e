"""ECE, MCE, Brier, AUROC, AUPRC and sharpness against scikit-learn, torchmetrics and known answers."""

from collections.abc import Callable
from typing import Literal

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score
from torchmetrics.functional.classification import binary_calibration_error

from calibrators import (
    adaptive_ece,
    auprc,
    auroc,
    brier_decomposition,
    brier_score,
    ece,
    mce,
    reliability_bins,
    sharpness,
)


def random_cases() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    cases = []
    for n in (2, 3, 10, 100, 1000):
        scores = rng.random(n)
        labels = (rng.random(n) < scores).astype(float)
        labels[:2] = [0.0, 1.0]  # both classes, so AUROC is defined
        cases.append((scores, labels))
    scores = rng.random(500)
    cases.append((np.round(scores, 1), (rng.random(500) < scores).astype(float)))  # many ties
    cases.append((rng.choice([0.0, 1.0], 300), rng.choice([0.0, 1.0], 300)))  # only the extremes
    cases.append((np.full(50, 0.7), np.r_[np.ones(35), np.zeros(15)]))  # one distinct score
    cases.append((rng.random(200) ** 8, (rng.random(200) < 0.05).astype(float)))  # rare positives
    for _, labels in cases:
        labels[:2] = [0.0, 1.0]
    return cases


CASES = random_cases()


@pytest.mark.parametrize(("scores", "labels"), CASES)
def test_auroc_auprc_brier_match_sklearn(scores: np.ndarray, labels: np.ndarray) -> None:
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert auprc(scores, labels) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert brier_score(scores, labels) == pytest.approx(brier_score_loss(labels, scores), abs=1e-15)


@pytest.mark.parametrize(("scores", "labels"), CASES)
@pytest.mark.parametrize("n_bins", [1, 10, 15])
def test_ece_and_mce_match_torchmetrics(scores: np.ndarray, labels: np.ndarray, n_bins: int) -> None:
    # torchmetrics closes bins on the left and gives a confidence of exactly 1.0 a bin of its own; moving a
    # confidence that sits on an edge slightly down puts it where our right-closed bins count it. (The
    # shift also covers torch.linspace edges, which can differ from k / n_bins in the last bit.)
    on_edge = np.isin(scores, np.arange(1, n_bins + 1) / n_bins)
    shifted = np.where(on_edge, scores - 1e-12, scores)
    preds, target = torch.tensor(shifted, dtype=torch.float64), torch.tensor(labels).long()
    norms: tuple[tuple[Literal["l1", "max"], Callable[..., float]], ...] = (("l1", ece), ("max", mce))
    for norm, ours in norms:
        theirs = binary_calibration_error(preds, target, n_bins=n_bins, norm=norm).item()
        assert ours(scores, labels, n_bins) == pytest.approx(theirs, abs=1e-10), norm


def test_bin_edges_are_right_closed_with_one_in_the_last_bin() -> None:
    # Two bins: (0, 0.5] and (0.5, 1]. 0.5 belongs to the first; torchmetrics would put it in the second.
    assert ece([0.5, 0.9], [1, 0], n_bins=2) == pytest.approx((0.5 + 0.9) / 2)
    torchmetrics = binary_calibration_error(torch.tensor([0.5, 0.9]), torch.tensor([1, 0]), n_bins=2).item()
    assert torchmetrics == pytest.approx(0.2)
    # 1.0 shares the last bin with 0.95 (torchmetrics gives it its own, for an ECE of 0.525).
    assert ece([0.95, 1.0], [1, 0], n_bins=2) == pytest.approx(abs(0.5 - 0.975))
    # Decimal edges count as edges: 0.3 and 0.7 close the third and seventh of ten bins.
    np.testing.assert_array_equal(np.flatnonzero(reliability_bins([0.3, 0.7], [0, 1], 10).counts), [2, 6])
    # np.linspace(0, 1, 7)[5] is one ulp below 5 / 6 and would push this confidence into the last bin.
    np.testing.assert_array_equal(np.flatnonzero(reliability_bins([5 / 6], [1], 6).counts), [4])
    # 0.0 is counted in the first bin rather than dropped.
    bins = reliability_bins([0.0, 0.0, 1.0], [0, 0, 1], n_bins=15)
    assert bins.counts[0] == 2 and bins.counts[-1] == 1 and bins.counts.sum() == 3


def test_reliability_bins_known_answer() -> None:
    scores, labels = [0.1, 0.2, 0.3, 0.7, 0.79, 1.0], [0, 0, 1, 1, 1, 0]
    bins = reliability_bins(scores, labels, n_bins=5)  # (0, .2], (.2, .4], (.4, .6], (.6, .8], (.8, 1]
    np.testing.assert_array_equal(bins.counts, [2, 1, 0, 2, 1])
    np.testing.assert_allclose(bins.confidence[[0, 1, 3, 4]], [0.15, 0.3, 0.745, 1.0])
    np.testing.assert_allclose(bins.accuracy[[0, 1, 3, 4]], [0.0, 1.0, 1.0, 0.0])
    assert np.isnan(bins.accuracy[2]) and np.isnan(bins.confidence[2])
    assert ece(scores, labels, n_bins=5) == pytest.approx((2 * 0.15 + 0.7 + 2 * 0.255 + 1.0) / 6)
    assert mce(scores, labels, n_bins=5) == pytest.approx(1.0)


def test_adaptive_ece_uses_equal_mass_bins() -> None:
    scores = [0.1, 0.15, 0.2, 0.9, 0.95, 0.97]
    labels = [0, 1, 0, 1, 1, 0]
    # Three bins of two items each: {0.1, 0.15}, {0.2, 0.9}, {0.95, 0.97}.
    expected = (2 * abs(0.5 - 0.125) + 2 * abs(0.5 - 0.55) + 2 * abs(0.5 - 0.96)) / 6
    assert adaptive_ece(scores, labels, n_bins=3) == pytest.approx(expected)
    # More bins than items: every item is its own bin, so the result is the mean absolute error.
    assert adaptive_ece(scores, labels, n_bins=50) == pytest.approx(
        np.mean(np.abs(np.subtract(scores, labels)))
    )
    # One bin is the gap between mean confidence and accuracy, as for equal-width ECE.
    assert adaptive_ece(scores, labels, n_bins=1) == pytest.approx(ece(scores, labels, n_bins=1))


def test_brier_decomposition_is_exact_when_each_bin_holds_one_confidence() -> None:
    rng = np.random.default_rng(1)
    centers = (np.arange(10) + 0.5) / 10
    scores = rng.choice(centers, 2000)
    labels = (rng.random(2000) < scores**1.5).astype(float)
    parts = brier_decomposition(scores, labels, n_bins=10)
    assert parts.brier == pytest.approx(brier_score_loss(labels, scores), abs=1e-15)
    assert parts.reliability - parts.resolution + parts.uncertainty == pytest.approx(parts.brier, abs=1e-12)
    assert parts.uncertainty == pytest.approx(labels.mean() * (1 - labels.mean()))
    assert parts.reliability > 0.005 and parts.resolution > 0.01


def test_brier_decomposition_is_approximate_when_bins_mix_confidences() -> None:
    rng = np.random.default_rng(2)
    scores = rng.random(2000)
    labels = (rng.random(2000) < scores).astype(float)
    parts = brier_decomposition(scores, labels, n_bins=10)
    identity = parts.reliability - parts.resolution + parts.uncertainty
    assert identity != pytest.approx(parts.brier, abs=1e-6)
    assert identity == pytest.approx(parts.brier, abs=0.01)


def test_perfect_and_constant_scorers() -> None:
    labels = np.r_[np.ones(30), np.zeros(70)]
    assert auroc(labels, labels) == 1.0 and auprc(labels, labels) == 1.0
    assert auroc(1 - labels, labels) == 0.0
    assert auroc(np.full(100, 0.3), labels) == 0.5
    assert auprc(np.full(100, 0.3), labels) == pytest.approx(0.3)
    assert ece(np.full(100, 0.3), labels) == pytest.approx(0.0, abs=1e-15)
    assert brier_score(labels, labels) == 0.0
    assert sharpness(np.full(100, 0.3)) == 0.0
    assert sharpness([0.0, 1.0]) == 0.5


@pytest.mark.parametrize("metric", [ece, mce, adaptive_ece, brier_score, auroc, auprc])
def test_metrics_reject_bad_input(metric) -> None:
    for scores, labels, message in [
        ([], [], "empty"),
        ([0.5, float("nan")], [0, 1], "NaN"),
        ([0.5, 1.01], [0, 1], r"\[0, 1\]"),
        ([0.5, 0.6, 0.7], [0, 1], "2 items but the scores have 3"),
        ([0.5, 0.6], [0, 0.5], "0/1"),
    ]:
        with pytest.raises(ValueError, match=message):
            metric(scores, labels)


def test_undefined_ranking_metrics_say_why() -> None:
    with pytest.raises(ValueError, match="AUROC needs both classes"):
        auroc([0.2, 0.8], [1, 1])
    with pytest.raises(ValueError, match="at least one positive"):
        auprc([0.2, 0.8], [0, 0])
    assert auprc([0.2, 0.8], [1, 1]) == 1.0
    with pytest.raises(ValueError, match="n_bins"):
        ece([0.2], [1], n_bins=0)
