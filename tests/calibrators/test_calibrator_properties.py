"""Property-based tests: every calibrator is monotone, bounded and survives save/load bit for bit; the
ranking metrics are invariant to input order and agree with scikit-learn on arbitrary data."""

import json
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score

from calibrators import CALIBRATORS, auprc, auroc, ece, from_dict, load, risk_coverage_curve, routing_curve

SETTINGS = settings(max_examples=40, deadline=None)

probabilities = st.floats(0.0, 1.0, allow_nan=False)
logits = st.floats(-60.0, 60.0, allow_nan=False)


@st.composite
def fitting_data(draw: st.DrawFn, scores: st.SearchStrategy[float]) -> tuple[list[float], list[int]]:
    """Scores with 0/1 labels holding both classes (so any calibrator can be fitted)."""
    pairs = draw(st.lists(st.tuples(scores, st.sampled_from([0, 1])), min_size=2, max_size=60))
    values, labels = [p[0] for p in pairs], [p[1] for p in pairs]
    labels[0], labels[1] = 0, 1
    return values, labels


def assert_monotone_in_unit_interval(calibrator, probe: list[float]) -> np.ndarray:
    out = calibrator.transform(np.sort(probe))
    assert np.all(np.diff(out) >= 0.0), out
    assert np.all((out >= 0.0) & (out <= 1.0)), out
    return out


@SETTINGS
@given(
    kind=st.sampled_from(sorted(CALIBRATORS)),
    data=fitting_data(probabilities),
    probe=st.lists(probabilities, min_size=1, max_size=80),
)
def test_probability_calibrators_are_monotone_bounded_and_round_trip(kind, data, probe) -> None:
    calibrator = CALIBRATORS[kind]().fit(*data)
    probe = probe + data[0] + [0.0, 1.0]
    out = assert_monotone_in_unit_interval(calibrator, probe)
    with tempfile.TemporaryDirectory() as folder:
        loaded = load(calibrator.save(Path(folder) / "calibrator.json"))
    assert np.array_equal(loaded.transform(np.sort(probe)), out)


@SETTINGS
@given(
    kind=st.sampled_from(sorted(CALIBRATORS)),
    data=fitting_data(logits),
    probe=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=80),
)
def test_logit_calibrators_are_monotone_bounded_and_round_trip(kind, data, probe) -> None:
    calibrator = CALIBRATORS[kind](input_kind="logit").fit(*data)
    out = assert_monotone_in_unit_interval(calibrator, probe + data[0])
    # Through text, as a file would carry it: JSON keeps every float exactly.
    loaded = from_dict(json.loads(json.dumps(calibrator.to_dict())))
    assert np.array_equal(loaded.transform(np.sort(probe + data[0])), out)


@SETTINGS
@given(data=fitting_data(probabilities), seed=st.integers(0, 2**32 - 1))
def test_metrics_do_not_depend_on_input_order(data, seed) -> None:
    scores, labels = np.asarray(data[0]), np.asarray(data[1], dtype=float)
    order = np.random.default_rng(seed).permutation(len(scores))
    assert auroc(scores[order], labels[order]) == auroc(scores, labels)
    assert auprc(scores[order], labels[order]) == auprc(scores, labels)
    # Bin sums accumulate in input order, so ECE may move in the last bits.
    assert np.isclose(ece(scores[order], labels[order]), ece(scores, labels), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(
        risk_coverage_curve(scores[order], labels[order]).risk,
        risk_coverage_curve(scores, labels).risk,
        rtol=1e-12,
    )


@SETTINGS
@given(data=fitting_data(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.9, 1.0]) | probabilities))
def test_ranking_metrics_agree_with_sklearn_on_arbitrary_data(data) -> None:
    scores, labels = data
    assert abs(auroc(scores, labels) - roc_auc_score(labels, scores)) < 1e-12
    assert abs(auprc(scores, labels) - average_precision_score(labels, scores)) < 1e-12


@SETTINGS
@given(
    rows=st.lists(
        st.tuples(probabilities, st.sampled_from([0, 1]), st.sampled_from([0, 1])), min_size=1, max_size=50
    )
)
def test_routing_curve_ends_at_each_model_and_stays_between_oracle_bounds(rows) -> None:
    scores, weak, strong = (np.asarray(column, dtype=float) for column in zip(*rows, strict=True))
    strong[0], weak[0] = 1.0, 0.0  # the strong model is strictly better on at least one item
    strong = np.maximum(strong, weak)
    curve = routing_curve(scores, weak, strong)
    assert curve.quality[0] == weak.mean() and curve.quality[-1] == strong.mean()
    # With a strong model never worse than the weak one, routing more items can only help.
    assert np.all(np.diff(curve.quality) >= -1e-12)
