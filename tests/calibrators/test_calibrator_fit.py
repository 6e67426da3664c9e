"""Fitting, transforming, saving and loading the four calibrators, checked against independent fits."""

import json

import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

import calibrators
from calibrators import (
    CALIBRATORS,
    HistogramBinning,
    IsotonicCalibrator,
    PlattScaling,
    TemperatureScaling,
    load,
)

KINDS: dict[str, type[TemperatureScaling | PlattScaling | IsotonicCalibrator | HistogramBinning]] = {
    "temperature": TemperatureScaling,
    "platt": PlattScaling,
    "isotonic": IsotonicCalibrator,
    "histogram": HistogramBinning,
}


def synthetic(n: int, seed: int, *, rounded: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Overconfident scores: the true probability of a positive is the score squared."""
    rng = np.random.default_rng(seed)
    scores = rng.random(n)
    if rounded:
        scores = np.round(scores, 1)
    return scores, (rng.random(n) < scores**2).astype(float)


def test_registry_names_every_kind() -> None:
    assert CALIBRATORS == KINDS


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("rounded", [False, True])
def test_isotonic_matches_sklearn(seed: int, rounded: bool) -> None:
    scores, labels = synthetic(400, seed, rounded=rounded)
    ours = IsotonicCalibrator().fit(scores, labels)
    theirs = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(scores, labels)
    grid = np.concatenate([np.linspace(0.0, 1.0, 2001), scores])
    np.testing.assert_allclose(ours.transform(grid), theirs.predict(grid), rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.thresholds, theirs.X_thresholds_, rtol=0, atol=0)


def test_isotonic_single_distinct_score_predicts_the_base_rate() -> None:
    calibrator = IsotonicCalibrator().fit([0.3, 0.3, 0.3, 0.3], [1, 0, 0, 0])
    np.testing.assert_array_equal(calibrator.transform([0.0, 0.3, 1.0]), [0.25, 0.25, 0.25])


def test_platt_matches_sklearn_logistic_regression_on_smoothed_targets() -> None:
    scores, labels = synthetic(500, 3)
    ours = PlattScaling().fit(scores, labels)
    positives, negatives = labels.sum(), len(labels) - labels.sum()
    targets = np.where(labels == 1, (positives + 1) / (positives + 2), 1 / (negatives + 2))
    # A soft target t is the same likelihood as a positive copy weighted t plus a negative weighted 1 - t.
    z = np.log(np.clip(scores, 1e-7, 1 - 1e-7) / (1 - np.clip(scores, 1e-7, 1 - 1e-7)))
    X = np.concatenate([z, z])[:, None]
    y = np.concatenate([np.ones_like(z), np.zeros_like(z)])
    model = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(
        X, y, sample_weight=np.concatenate([targets, 1 - targets])
    )
    assert ours.slope == pytest.approx(model.coef_[0, 0], rel=1e-6)
    assert ours.intercept == pytest.approx(model.intercept_[0], rel=1e-6)


def test_platt_on_anticorrelated_scores_is_constant_base_rate() -> None:
    scores, labels = synthetic(300, 4)
    calibrator = PlattScaling().fit(1 - scores, labels)
    assert calibrator.slope == 0.0
    positives = labels.sum()
    smoothed_mean = (
        (positives + 1) / (positives + 2) * positives
        + (len(labels) - positives) / (len(labels) - positives + 2)
    ) / len(labels)
    np.testing.assert_allclose(calibrator.transform([0.0, 0.5, 1.0]), smoothed_mean, rtol=1e-12)


def test_temperature_minimises_the_likelihood_like_scipy() -> None:
    rng = np.random.default_rng(5)
    logits = rng.normal(0, 3, 4000)
    labels = (rng.random(4000) < 1 / (1 + np.exp(-logits / 2.0))).astype(float)
    fitted = TemperatureScaling(input_kind="logit").fit(logits, labels)

    def nll(temperature: float) -> float:
        s = logits / temperature
        return float(np.sum(np.logaddexp(0, s) - labels * s))

    best = minimize_scalar(nll, bounds=(0.01, 100), method="bounded", options={"xatol": 1e-10})
    assert fitted.temperature == pytest.approx(best.x, rel=1e-6)
    assert fitted.temperature == pytest.approx(2.0, rel=0.1)


def test_temperature_on_probabilities_uses_clipped_logits() -> None:
    scores, labels = synthetic(500, 6)
    from_probabilities = TemperatureScaling().fit(scores, labels)
    clipped = np.clip(scores, 1e-7, 1 - 1e-7)
    from_logits = TemperatureScaling(input_kind="logit").fit(np.log(clipped / (1 - clipped)), labels)
    assert from_probabilities.temperature == pytest.approx(from_logits.temperature, rel=1e-9)
    extremes = from_logits.transform([-16.118, 16.118])
    np.testing.assert_allclose(from_probabilities.transform([0.0, 1.0]), extremes, atol=1e-6)


def test_temperature_is_bounded_when_scores_carry_no_signal() -> None:
    scores, labels = synthetic(300, 7)
    assert TemperatureScaling().fit(1 - scores, labels).temperature == 1e6
    separable = TemperatureScaling(input_kind="logit").fit([-2.0, -1.0, 1.0, 2.0], [0, 0, 1, 1])
    assert separable.temperature == 1e-6
    np.testing.assert_array_equal(separable.transform([-0.01, 0.0, 0.01]), [0.0, 0.5, 1.0])


def test_histogram_binning_known_answer() -> None:
    scores = [0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9]
    labels = [0, 0, 0, 1, 0, 1, 1, 1]
    calibrator = HistogramBinning(n_bins=4).fit(scores, labels)
    np.testing.assert_array_equal(calibrator.edges, [0.2, 0.4, 0.7])
    np.testing.assert_array_equal(calibrator.values, [0.0, 0.5, 0.5, 1.0])
    np.testing.assert_array_equal(
        calibrator.transform([0.0, 0.2, 0.21, 0.4, 0.5, 0.7, 0.71, 1.0]),
        [0.0, 0.0, 0.5, 0.5, 0.5, 0.5, 1.0, 1.0],
    )


def test_histogram_binning_pools_a_decreasing_bin() -> None:
    calibrator = HistogramBinning(n_bins=3).fit([0.1, 0.2, 0.5, 0.6, 0.8, 0.9], [0, 1, 0, 0, 1, 1])
    # The raw bin rates are 0.5, 0.0, 1.0; the first two pool to 0.25.
    np.testing.assert_array_equal(calibrator.values, [0.25, 0.25, 1.0])


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_save_load_is_bit_identical_and_versioned(kind: str, tmp_path) -> None:
    scores, labels = synthetic(300, 8)
    fitted = KINDS[kind]().fit(scores, labels)
    path = fitted.save(tmp_path / "calibrator.json")
    document = json.loads(path.read_text())
    assert document["format"] == "confidence-router/calibrator"
    assert document["version"] == 1
    assert document["kind"] == kind
    loaded = load(path)
    assert type(loaded) is type(fitted)
    probe = np.random.default_rng(9).random(10_000)
    assert np.array_equal(loaded.transform(probe), fitted.transform(probe))
    assert loaded.to_dict() == fitted.to_dict()


def test_logit_input_kind_round_trips(tmp_path) -> None:
    rng = np.random.default_rng(10)
    logits = rng.normal(0, 4, 200)
    labels = (logits + rng.normal(0, 2, 200) > 0).astype(float)
    fitted = PlattScaling(input_kind="logit").fit(logits, labels)
    loaded = load(fitted.save(tmp_path / "c.json"))
    assert loaded.input_kind == "logit"
    assert np.array_equal(loaded.transform(logits * 3), fitted.transform(logits * 3))


@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        ([], [], "empty"),
        ([0.2, 0.8], [1, 1], "both classes"),
        ([0.2, float("nan")], [0, 1], "NaN"),
        ([0.2, 1.5], [0, 1], r"\[0, 1\]"),
        ([-0.1, 0.5], [0, 1], r"\[0, 1\]"),
        ([0.2, 0.5, 0.7], [0, 1], "2 items but the scores have 3"),
        ([[0.2, 0.5]], [[0, 1]], "one-dimensional"),
        ([0.2, 0.5], [0, 2], "0/1"),
        (["a", "b"], [0, 1], "numeric"),
    ],
)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_fit_rejects_bad_input(kind: str, scores, labels, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KINDS[kind]().fit(scores, labels)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_transform_rejects_bad_input_and_requires_fit(kind: str) -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        KINDS[kind]().transform([0.5])
    fitted = KINDS[kind]().fit([0.1, 0.4, 0.6, 0.9], [0, 1, 0, 1])
    for bad, message in [([1.2], r"\[0, 1\]"), ([float("inf")], "infinite"), ([], "empty")]:
        with pytest.raises(ValueError, match=message):
            fitted.transform(bad)


def test_logit_input_accepts_any_real_but_not_nan() -> None:
    calibrator = TemperatureScaling(input_kind="logit").fit([-30.0, -1.0, 2.0, 40.0], [0, 1, 0, 1])
    np.testing.assert_array_equal(calibrator.transform([-1e6, 1e6]), [0.0, 1.0])
    with pytest.raises(ValueError, match="NaN"):
        calibrator.transform([float("nan")])
    with pytest.raises(ValueError, match="input_kind"):
        TemperatureScaling(input_kind="odds")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "something-else"}, "not a calibrator file"),
        ({"version": 2}, "unsupported calibrator version 2"),
        ({"kind": "beta"}, "unknown calibrator kind 'beta'"),
        ({"params": {}}, "malformed isotonic"),
        ({"params": {"thresholds": [0.1, 0.2], "values": [0.9, 0.1]}}, "malformed isotonic"),
        ({"params": {"thresholds": [0.1], "values": [float("nan")]}}, "malformed isotonic"),
    ],
)
def test_load_rejects_bad_files(change: dict, message: str, tmp_path) -> None:
    document = IsotonicCalibrator().fit([0.1, 0.9], [0, 1]).to_dict() | change
    path = tmp_path / "calibrator.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match=message):
        load(path)


def test_load_rejects_non_json(tmp_path) -> None:
    path = tmp_path / "calibrator.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        calibrators.load(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        calibrators.load(path)


def test_calibration_lowers_ece_on_held_out_data() -> None:
    train_scores, train_labels = synthetic(4000, 11)
    test_scores, test_labels = synthetic(4000, 12)
    before = calibrators.ece(test_scores, test_labels)
    for kind in ("platt", "isotonic", "histogram"):
        after = calibrators.ece(
            KINDS[kind]().fit(train_scores, train_labels).transform(test_scores), test_labels
        )
        assert after < before / 3, kind
