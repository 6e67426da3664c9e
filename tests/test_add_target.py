"""`router add-target` / `remove-target`: a head for one more model on a scorer's frozen states, read at its
own layer on the same forward pass, with every other head, the adapter and the calibrators left
bit-identical; and a model dropped again."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from commands import app
from localmodel import LocalModel
from scorers import ScoreItem
from scorers.card import ScorerCard
from scorers.head import HEAD_FILE, HeadScorer
from tests.tiny import make_head_scorer

GEMMA_LABELS = Path(__file__).parents[1] / "train" / "labels" / "gemma-3-270m.jsonl"
TARGETS = ["smollm2-135m-instruct", "other-model"]
PROMPTS = [[{"role": "user", "content": q}] for q in ("What is the capital of Peru?", "Who wrote Hamlet?")]


@pytest.fixture(scope="module")
def labels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """600 of Gemma-3-270M's real labelled answers (about 60 right)."""
    path = tmp_path_factory.mktemp("labels") / "gemma.jsonl"
    path.write_text("".join(GEMMA_LABELS.read_text().splitlines(keepends=True)[:600]))
    return path


@pytest.fixture(scope="module")
def scorer(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_head_scorer(tiny_model, tmp_path_factory.mktemp("two-heads"), layer=3, targets=TARGETS)


@pytest.fixture(scope="module")
def added(scorer: Path, labels: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("added") / "scorer"
    result = CliRunner().invoke(
        app,
        ["add-target", "--scorer", str(scorer), "--labels", str(labels), "--out", str(out), "--layer", "2"],
    )
    assert result.exit_code == 0, result.output
    return out


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_the_added_head_leaves_every_file_of_the_scorer_as_it_was(scorer: Path, added: Path) -> None:
    before, after = files(scorer), files(added)
    assert {name: after[name] for name in before if name != "scorer.json"} == {
        name: data for name, data in before.items() if name != "scorer.json"
    }
    assert set(after) - set(before) == {"head.gemma-3-270m.safetensors", "calibrator.gemma-3-270m.json"}
    card = ScorerCard.load(added)
    assert [t.model for t in card.targets] == [*TARGETS, "gemma-3-270m"]
    new = card.targets[-1]
    assert (new.head, new.layer) == ("head.gemma-3-270m.safetensors", 2)
    report = card.extra()["added_targets"]["gemma-3-270m"]
    assert report["layer"] == 2 and report["rows"]["train"] > 300 and report["positives"]["calibration"] > 0


def test_the_new_head_reads_its_own_layer_on_the_same_pass_and_the_others_score_as_before(
    scorer: Path, added: Path
) -> None:
    model = LocalModel(ScorerCard.load(scorer).base_model)
    old, new = HeadScorer(model, scorer), HeadScorer(model, added)
    assert new.layers == [2, 3] and new.version != old.version
    items = [ScoreItem(p) for p in PROMPTS]
    before, after = old.raw_scores(items), new.raw_scores(items)
    np.testing.assert_allclose(after[:, :2], before, rtol=1e-6, atol=1e-7)
    from safetensors.torch import load_file

    head = load_file(str(added / "head.gemma-3-270m.safetensors"))
    at_two = new.states_at(items, [2])[2]
    expected = torch.sigmoid(at_two @ head["weight"][0] + head["bias"][0]).numpy()
    np.testing.assert_allclose(after[:, 2], expected, rtol=1e-5, atol=1e-6)
    served = new.score_batch(items)[0].raw
    assert served == pytest.approx(dict(zip(new.targets, after[0], strict=True)), rel=1e-6)
    assert set(new.calibrators) == {*TARGETS, "gemma-3-270m"}


def test_removing_the_added_target_gives_back_the_scorer(added: Path, scorer: Path, tmp_path: Path) -> None:
    out = tmp_path / "removed"
    result = CliRunner().invoke(
        app, ["remove-target", "--scorer", str(added), "--target", "gemma-3-270m", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert {k: v for k, v in files(out).items() if k != "scorer.json"} == {
        k: v for k, v in files(scorer).items() if k != "scorer.json"
    }
    assert ScorerCard.load(out).targets == ScorerCard.load(scorer).targets


def test_removing_a_jointly_trained_target_keeps_the_other_rows_values(added: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "removed"
    result = CliRunner().invoke(
        app, ["remove-target", "--scorer", str(added), "--target", TARGETS[0], "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    before, after = load_file(str(added / HEAD_FILE)), load_file(str(out / HEAD_FILE))
    assert torch.equal(after["weight"], before["weight"][1:]) and torch.equal(
        after["bias"], before["bias"][1:]
    )
    card = ScorerCard.load(out)
    assert [t.model for t in card.targets] == ["other-model", "gemma-3-270m"]
    assert "reference_scores" not in card.extra() and not (out / "calibrator.json").exists()
    scorer = HeadScorer(LocalModel(card.base_model), out)
    assert scorer.raw_scores([ScoreItem(PROMPTS[0])]).shape == (1, 2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "smollm2-135m-instruct"], "no rows labelled by smollm2-135m-instruct"),
        ([], "already predicts gemma-3-270m"),
    ],
)
def test_bad_requests_exit_2_with_one_line_and_write_nothing(
    added: Path, labels: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "never"
    result = CliRunner().invoke(
        app, ["add-target", "--scorer", str(added), "--labels", str(labels), "--out", str(out), *args]
    )
    assert result.exit_code == 2 and message in result.output and not out.exists()
    assert len([line for line in result.output.splitlines() if line.startswith("error")]) == 1


def test_a_folder_that_is_not_empty_is_never_written_over(scorer: Path, added: Path, tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    result = CliRunner().invoke(
        app, ["remove-target", "--scorer", str(added), "--target", "gemma-3-270m", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and "not empty" in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
    assert json.loads((added / "scorer.json").read_text())["targets"][-1]["model"] == "gemma-3-270m"


def test_without_right_and_wrong_dev_rows_the_head_reads_the_scorers_layer(
    scorer: Path, labels: Path, tmp_path: Path
) -> None:
    from train.splits import split_of

    rows = [json.loads(line) for line in labels.read_text().splitlines()]
    all_wrong = tmp_path / "dev-all-wrong.jsonl"
    all_wrong.write_text(
        "".join(
            json.dumps({**r, "correct": r["correct"] and split_of(r["id"], 0) != "dev"}) + "\n" for r in rows
        )
    )
    out = tmp_path / "added"
    result = CliRunner().invoke(
        app, ["add-target", "--scorer", str(scorer), "--labels", str(all_wrong), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "dev rows are all right or all wrong" in result.output
    assert ScorerCard.load(out).targets[-1].layer == ScorerCard.load(scorer).layer == 3
