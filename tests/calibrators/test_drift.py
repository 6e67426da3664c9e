"""PSI and the two-sample KS test against scipy and hand-worked answers."""

import math

import numpy as np
import pytest
from scipy.stats import ks_2samp, kstwobign

from calibrators import ks_critical_value, ks_statistic, psi


def samples() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [
        (rng.random(500), rng.random(200)),
        (rng.beta(2, 5, 1000), rng.beta(5, 2, 100)),
        (np.round(rng.random(300), 1), np.round(rng.random(50), 1)),  # ties within and across samples
        (rng.random(7), rng.random(3)),
    ]


@pytest.mark.parametrize(("reference", "live"), samples())
def test_ks_statistic_matches_scipy(reference: np.ndarray, live: np.ndarray) -> None:
    assert ks_statistic(reference, live) == pytest.approx(ks_2samp(reference, live).statistic, abs=1e-12)


@pytest.mark.parametrize("alpha", [0.05, 0.01, 0.001])
def test_ks_critical_value_is_the_kolmogorov_quantile(alpha: float) -> None:
    n, m = 500, 200
    exact_asymptotic = kstwobign.isf(alpha) * math.sqrt((n + m) / (n * m))
    assert ks_critical_value(n, m, alpha) == pytest.approx(exact_asymptotic, rel=1e-3)


def test_psi_by_hand() -> None:
    # Reference quartiles cut at 2.75, 4.5 and 6.25: the four bins hold 2 of the 8 each.
    reference = [1, 2, 3, 4, 5, 6, 7, 8]
    live = [1, 1, 1, 8]  # bins hold 3, 0, 0, 1
    p = (np.array([2, 2, 2, 2]) + 0.5) / (8 + 2)
    q = (np.array([3, 0, 0, 1]) + 0.5) / (4 + 2)
    assert psi(reference, live, bins=4) == pytest.approx(float(np.sum((q - p) * np.log(q / p))))


def test_psi_is_zero_for_the_same_sample_and_grows_with_the_shift() -> None:
    rng = np.random.default_rng(1)
    reference = rng.normal(0, 1, 2000)
    assert psi(reference, reference) == pytest.approx(0.0, abs=1e-12)
    shifts = [psi(reference, rng.normal(shift, 1, 500)) for shift in (0.0, 0.5, 1.0, 2.0)]
    assert shifts == sorted(shifts)
    assert shifts[0] < 0.1 < 0.25 < shifts[2]


def test_monotone_maps_of_both_samples_change_neither_statistic() -> None:
    """The drift monitor compares raw scores, which a recalibration must not turn into drift."""
    rng = np.random.default_rng(2)
    reference, live = rng.random(400), rng.beta(2, 3, 150)

    def platt(x: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-(3.0 * x - 1.2)))

    assert psi(platt(reference), platt(live)) == pytest.approx(psi(reference, live), abs=1e-12)
    assert ks_statistic(platt(reference), platt(live)) == pytest.approx(ks_statistic(reference, live))


def test_discrete_scores_collapse_repeated_edges() -> None:
    reference = [0.0, 0.0, 0.0, 0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.0]
    assert math.isfinite(psi(reference, [0.0, 1.0, 1.0]))


@pytest.mark.parametrize(
    ("reference", "live", "says"),
    [
        ([], [0.5], "reference is empty"),
        ([0.5], [math.nan], "live contains 1 NaN"),
        ([[0.1]], [0.1], "one-dim"),
    ],
)
def test_bad_samples_are_rejected(reference: list[float], live: list[float], says: str) -> None:
    for statistic in (psi, ks_statistic):
        with pytest.raises(ValueError, match=says):
            statistic(reference, live)


def test_bad_critical_value_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="alpha"):
        ks_critical_value(10, 10, 1.5)
    with pytest.raises(ValueError, match="positive"):
        ks_critical_value(0, 10, 0.01)
