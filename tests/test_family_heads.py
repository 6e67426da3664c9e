"""Family heads: a certainty head fitted on one task family's rows, read on the same pass where the task head
takes a request for that family and nowhere else, its probability kept through the model's calibrator, and
the card, the files and the command's mistakes as a user meets them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import calibrators
from calibrators import IsotonicCalibrator, PlattScaling, TemperatureScaling
from commands import app
from localmodel.model import LocalModel
from scorers import ScoreItem
from scorers.base import calibrate
from scorers.card import ScorerCard
from scorers.head import HeadScorer
from train.data import load_records, prompt, shared_data_dir
from train.family_heads import FamilyHead, nested_scores, on_raw_scale, train_family_heads
from train.probe import LinearProbe
from train.task_head import train_task_head

DATA = shared_data_dir()
MATH = load_records(DATA / "gsm8k" / "test.jsonl")
TRIVIA = load_records(DATA / "triviaqa" / "triviaqa_sm_sub.jsonl")


@pytest.fixture(scope="module")
def with_task_head(tiny_head: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny scorer with a task head told qa from math."""
    folder = tmp_path_factory.mktemp("family-heads") / "scorer"
    shutil.copytree(tiny_head, folder)
    train_task_head(folder, [*TRIVIA[:30], *MATH[:30]], frozenset(), per_source=30, seed=0, cache=None)
    return folder


def cached(with_task_head: Path) -> Path:
    """One prompt-states file for every copy of that scorer (they share its adapter): a test after the first
    reads the states instead of running the model again."""
    return with_task_head.parent / "states.npz"


def labels(folder: Path, tmp_path: Path) -> Path:
    """The tiny model's labels: 90 math rows, a third right (by place: the mechanics are under test, not
    what the tiny model knows), and 40 trivia rows with two right, too few for a head."""
    model = ScorerCard.load(folder).base_model
    rows = [{**r.model_dump(), "model": model, "correct": i % 3 == 0} for i, r in enumerate(MATH[100:190])]
    rows += [{**r.model_dump(), "model": model, "correct": i < 2} for i, r in enumerate(TRIVIA[100:140])]
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_a_family_head_is_read_where_the_task_head_sees_its_family_and_nowhere_else(
    with_task_head: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "scorer"
    shutil.copytree(with_task_head, folder)
    model = LocalModel(ScorerCard.load(folder).base_model)
    before = HeadScorer(model, folder)
    said: list[str] = []
    reports = train_family_heads(
        folder, [labels(folder, tmp_path)], min_positives=10, cache=cached(with_task_head), log=said.append
    )

    card = ScorerCard.load(folder)
    assert [(h.model, h.family) for h in card.family_heads] == [(card.base_model, "math")]
    assert [r["family"] for r in reports] == ["math"] and reports[0]["nested"]["n"] == 90
    assert any("/ qa: 2 right" in line and "left to the joint heads" in line for line in said)
    assert (folder / card.family_heads[0].head).is_file()
    after = HeadScorer(model, folder)
    assert after.version != before.version and card.family_heads[0].layer in after.layers

    items = [ScoreItem(prompt(r)) for r in [*MATH[300:306], *TRIVIA[300:306]]]
    old, new = before.score_batch(items), after.score_batch(items)
    families = [score.family for score in new]
    assert "math" in families and "qa" in families
    assert all(score.task is not None and set(score.task) == {"qa", "math"} for score in new)
    for was, now in zip(old, new, strict=True):
        assert now.task == was.task  # the task head is untouched
        if now.family == "math":
            assert now.raw != was.raw
        else:
            assert now.raw == was.raw  # bit-identical: read by the joint head as before
    assert np.allclose(after.raw_scores(items)[:, 0], [s.raw[card.base_model] for s in new], atol=1e-6)


@pytest.mark.parametrize(
    "calibrator",
    [None, PlattScaling(), TemperatureScaling()],
    ids=["uncalibrated", "platt", "temperature"],
)
def test_a_family_heads_probability_comes_through_its_models_calibrator(
    calibrator: calibrators.Calibrator | None,
) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8))
    y = (x[:, 0] + rng.normal(size=300) > 1).astype(float)
    probe = LinearProbe(1e-2).fit(x, y)
    platt = PlattScaling().fit(LinearProbe(1e-2).fit(x[:150], y[:150]).transform(x[150:]), y[150:])
    head = FamilyHead(layer=3, c=1e-2, cv_auroc=0.0, probe=probe, platt=platt)
    if calibrator is not None:  # the model's own calibrator, fitted on its own scores (over-confident ones)
        scores = rng.uniform(0.01, 0.99, 400)
        calibrator.fit(scores, rng.uniform(size=400) < 0.2 + 0.5 * scores)
    weight, bias = on_raw_scale(head, calibrator)
    logit = x @ weight + bias
    wanted = head.probability({3: x})
    got = calibrate("m", 1 / (1 + np.exp(-logit)), {"m": calibrator} if calibrator else {})
    inside = np.abs(logit) < 16  # the calibrators clip raw logits beyond (calibrators.base.LOGIT_EPS)
    assert inside.mean() > 0.9
    assert np.abs(got - wanted)[inside].max() < 1e-9


def test_a_model_calibrated_by_an_irreversible_map_takes_no_family_head() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(100, 4)), (rng.uniform(size=100) < 0.3).astype(float)
    head = FamilyHead(1, 1e-2, 0.0, LinearProbe(1e-2).fit(x, y), PlattScaling().fit(rng.uniform(size=100), y))
    isotonic = IsotonicCalibrator().fit(rng.uniform(size=100), y)
    with pytest.raises(ValueError, match="invertible"):
        on_raw_scale(head, isotonic)


def test_a_held_out_sources_rows_are_never_fitted_on() -> None:
    rng = np.random.default_rng(2)
    x = {5: rng.normal(size=(200, 6))}
    y = (x[5][:, 0] + rng.normal(size=200) > 0.8).astype(float)
    ids = [f"row:{i}" for i in range(200)]
    unseen = np.arange(200) >= 160
    scores = nested_scores(x, y, ids, unseen)
    flipped = np.where(unseen, 1 - y, y)  # what the held-out rows say cannot move any score
    assert np.array_equal(nested_scores(x, flipped, ids, unseen), scores)
    assert not np.array_equal(nested_scores(x, flipped, ids, np.zeros(200, dtype=bool)), scores)
    assert calibrators.auroc(scores[unseen], y[unseen]) > 0.7


def test_only_the_families_asked_for_get_heads(with_task_head: Path, tmp_path: Path) -> None:
    folder = tmp_path / "scorer"
    shutil.copytree(with_task_head, folder)
    label_file = labels(folder, tmp_path)
    train_family_heads(folder, [label_file], 10, cached(with_task_head), lambda _: None, frozenset({"qa"}))
    assert ScorerCard.load(folder).family_heads == []
    with pytest.raises(ValueError, match="unknown task families: maths"):
        train_family_heads(folder, [label_file], log=lambda _: None, families=frozenset({"maths"}))


def test_a_refit_with_no_family_left_removes_the_heads(with_task_head: Path, tmp_path: Path) -> None:
    folder = tmp_path / "scorer"
    shutil.copytree(with_task_head, folder)
    label_file = labels(folder, tmp_path)
    train_family_heads(
        folder, [label_file], min_positives=10, cache=cached(with_task_head), log=lambda _: None
    )
    written = folder / ScorerCard.load(folder).family_heads[0].head
    train_family_heads(
        folder, [label_file], min_positives=1000, cache=cached(with_task_head), log=lambda _: None
    )
    assert ScorerCard.load(folder).family_heads == [] and not written.exists()


def test_a_card_naming_a_family_no_task_head_tells_apart_does_not_load(
    with_task_head: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "scorer"
    shutil.copytree(with_task_head, folder)
    train_family_heads(folder, [labels(folder, tmp_path)], 10, cached(with_task_head), lambda _: None)
    card = json.loads((folder / "scorer.json").read_text())
    card["family_heads"][0]["family"] = "code"
    (folder / "scorer.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="a family head for 'code', which no task head tells apart"):
        HeadScorer(LocalModel(card["base_model"]), folder)


def test_the_command_needs_a_task_head(tiny_head: Path, tmp_path: Path) -> None:
    folder = tmp_path / "scorer"
    shutil.copytree(tiny_head, folder)
    result = CliRunner().invoke(
        app, ["train-family-heads", "--scorer", str(folder), "--data", str(labels(folder, tmp_path))]
    )
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: {folder}: no task head (router train-task-head): nothing would read a family head"
    ]
