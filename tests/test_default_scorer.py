"""The scorer the default policy ships: it loads from the policy, says where it came from, and ranks the
real model's answers on held-out rows better than chance and better than N-Prob."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import calibrators
from localmodel.model import LocalModel
from policies import DEFAULT_POLICY_PATH, load_policy
from scorers import ScoreItem
from scorers.card import ScorerCard
from scorers.head import HeadScorer
from train.data import QARecord, prompt
from train.jobs import read_labels
from train.splits import split_rows

LABEL_DIR = Path(__file__).parents[1] / "train" / "labels"
LABELS = LABEL_DIR / "smollm2-135m-instruct.jsonl"
EFFICIENTQA = LABEL_DIR / "smollm2-135m-instruct-efficientqa.jsonl"
PASSAGES = LABEL_DIR / "smollm2-135m-instruct-passages.jsonl"
FAMILIES = (LABEL_DIR / "smollm2-135m-instruct-families.jsonl", LABEL_DIR / "gemma-3-270m-families.jsonl")


@pytest.fixture(scope="module")
def folder() -> Path:
    spec = load_policy(DEFAULT_POLICY_PATH).scorer
    assert spec.method == "head" and spec.adapter is not None
    return Path(spec.adapter)


@pytest.fixture(scope="module")
def scorer(folder: Path, smollm2: Path) -> HeadScorer:
    return HeadScorer(LocalModel(str(smollm2)), folder)


def test_the_card_records_its_data_split_and_calibration(folder: Path) -> None:
    card = ScorerCard.load(folder)
    training = card.extra()["training"]
    assert card.base_model == "smollm2-135m-instruct" and card.layer == 20 and card.pooling == "last+mean"
    recorded = {entry["file"]: entry["rows"] for entry in training["labels"]}
    files = (LABELS, EFFICIENTQA, PASSAGES, LABEL_DIR / "gemma-3-270m.jsonl", *FAMILIES)
    assert list(recorded) == [str(path.relative_to(LABEL_DIR.parents[1])) for path in files]
    # Labels files are only appended to; the families files have had rows for the family heads since.
    for path in files:
        now = len(read_labels([path]))
        trained = recorded[str(path.relative_to(LABEL_DIR.parents[1]))]
        assert trained == now if path not in FAMILIES else trained <= now
    assert [t.model for t in card.targets] == ["smollm2-135m-instruct", "gemma-3-270m"]
    assert training["held_out_sources"] == ["boolq", "jeopardy", "nq_open_efficientqa_test"]
    trained = training["rows_by_source_and_split"]["train"]
    assert not set(training["held_out_sources"]) & set(trained)
    for target in card.targets:  # each head calibrated on the calibration rows its model answered
        calibration = training["calibration"][target.model]
        assert calibration["method"] == "platt" and calibration["positives"] >= 10
        assert target.calibrator is not None and (folder / target.calibrator).is_file()
    assert (folder / "adapter_model.safetensors").stat().st_size < 5_000_000  # a few MB at most


def test_each_family_head_was_fitted_on_every_row_of_its_family(folder: Path) -> None:
    card = ScorerCard.load(folder)
    assert {(h.model, h.family) for h in card.family_heads} == {
        ("smollm2-135m-instruct", "instructions"),
        ("gemma-3-270m", "instructions"),
    }
    rows = read_labels(list(FAMILIES))
    for head in card.family_heads:
        mine = [r for r in rows if r["model"] == head.model and QARecord.of_label(r).family == head.family]
        report = head.model_extra or {}
        assert report["nested"]["n"] == len(mine) and report["nested"]["positives"] == sum(
            r["correct"] for r in mine
        )
        assert (folder / head.head).is_file() and head.layer <= (card.layer or 0)


def test_it_ranks_held_out_answers_better_than_n_prob(scorer: HeadScorer) -> None:
    card = ScorerCard.load(scorer.folder).extra()["training"]
    test = split_rows(read_labels([LABELS, EFFICIENTQA]), card["seed"], frozenset(card["held_out_sources"]))[
        "test"
    ]
    rows = [r for r in test if r["source"] in {"triviaqa", "nq_open_dev"}]
    raw = np.concatenate(
        [
            scorer.raw_scores([ScoreItem(prompt(QARecord.of_label(r))) for r in rows[i : i + 32]])
            for i in range(0, len(rows), 32)
        ]
    )
    raw = raw[:, scorer.targets.index("smollm2-135m-instruct")]  # the head on SmolLM2's own answers
    correct = np.array([r["correct"] for r in rows], dtype=float)
    nprob = np.array([r["nprob"] for r in rows])
    assert correct.sum() >= 20
    assert calibrators.auroc(raw, correct) > max(0.7, calibrators.auroc(nprob, correct))
