"""The alias grader on real questions, `grader_for`'s choice of grader, and the shipped labels: every row
graded by the one combined rule they record is graded the same by the graders that split it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from train.data import QARecord, load_records, shared_data_dir
from train.graders import GRADERS, grader_for
from train.graders.alias import AliasGrader

DATA = shared_data_dir()
LABELS = Path(__file__).parents[2] / "train" / "labels"
LEGACY_RULES = ("alias-in-first-line/v1:", "abstains-in-first-line/v1:")
"""What the shipped labels record: one rule for alias and choice, one for abstaining."""


def record(question: str, answers: list[str], choices: list[str] | None = None) -> QARecord:
    return QARecord(id="t", question=question, answers=answers, choices=choices, source="t")


@pytest.fixture(scope="module")
def trivia() -> dict[str, QARecord]:
    return {r.id: r for r in load_records(DATA / "triviaqa" / "triviaqa_sm_sub.jsonl")}


def grade(answer: str, rec: QARecord) -> bool | None:
    return AliasGrader().grade(answer, rec).correct


@pytest.mark.parametrize(
    ("answer", "correct"),
    [
        ("Onion", True),
        ("Onionskin paper", False),  # a whole word, not the start of one
        ("Leeks", False),
        ("Onion skins\nor shallots", True),
        ("Shallots.\nOnion, actually.", False),  # the first line decides
        ("", False),  # malformed: no answer at all
        ("   \n\n", False),
        ("Pickled onion!", True),  # punctuation and case do not matter
    ],
)
def test_a_gold_alias_in_the_first_line(trivia: dict[str, QARecord], answer: str, correct: bool) -> None:
    rec = trivia["triviaqa:0"]
    assert rec.question.startswith("Brunswick, Lancastrian and Pearl Pickler") and "Onion" in rec.answers
    assert grade(answer, rec) is correct


@pytest.mark.parametrize(
    ("answer", "rec", "correct"),
    [
        ("It is Paris.", record("What is the capital of France?", ["Paris"]), True),
        (
            "The capital is Lyon.\nParis is bigger.",
            record("What is the capital of France?", ["Paris"]),
            False,
        ),
        ("Parisian food", record("What is the capital of France?", ["Paris"]), False),  # word boundaries
        # The gold alias repeats the question: saying it back is not knowing the answer.
        (
            "The Beatles song Yesterday",
            record("Which Beatles song is Yesterday?", ["Yesterday", "Beatles"]),
            False,
        ),
    ],
)
def test_the_alias_rule(answer: str, rec: QARecord, correct: bool) -> None:
    assert grade(answer, rec) is correct


def test_details_name_the_alias_that_matched(trivia: dict[str, QARecord]) -> None:
    result = AliasGrader().grade("Onion skins", trivia["triviaqa:0"])
    assert result.correct and result.details == {"matched": "onion"}  # the first alias that matches
    assert result.rule == AliasGrader.rule and result.rule.startswith("alias/v1: ")
    assert AliasGrader().grade("Leek", trivia["triviaqa:0"]).details == {"matched": None}


def test_grader_for_picks_by_field_then_by_name() -> None:
    plain = record("Capital of Peru?", ["Lima"])
    assert grader_for(plain).name == "alias"  # nothing calls for another: the fallback
    assert grader_for(plain, "math").name == "math"  # the labeller's default, where nothing else decides
    assert grader_for(plain.model_copy(update={"task": "qa"}), "math").name == "alias"  # its fields decide
    assert grader_for(plain.model_copy(update={"task": "math"})).name == "math"
    assert grader_for(record("Is it?", ["no"], ["no", "yes"]), "math").name == "choice"
    other = record("Is it?", ["no"], ["no", "yes"]).model_copy(update={"context_variant": "other"})
    assert grader_for(other).name == "abstain"  # a passage that cannot answer wins over the choices
    named = plain.model_copy(update={"grader": "choice", "task": "math"})
    assert grader_for(named).name == "choice"  # the record's own grader comes first
    with pytest.raises(ValueError, match=r"^unknown grader 'nope' \(known: .*alias.*\)$"):
        grader_for(plain.model_copy(update={"grader": "nope"}))
    assert {"alias", "choice", "abstain", "math"} <= set(GRADERS)
    assert all(GRADERS[name].rule.startswith(f"{name}/v") for name in ("alias", "choice", "abstain", "math"))


def test_the_shipped_labels_grade_the_same_by_the_graders_that_split_their_rule() -> None:
    """25,986 real answers of SmolLM2 and Gemma (trivia, NQ, multiple choice, passages asked with their own
    passage, another's and none), each with its greedy answer and sampled ones."""
    rows = [
        json.loads(line)
        for path in sorted(LABELS.glob("*.jsonl"))
        if "families" not in path.name and "judged" not in path.name  # labelled since, by the graders
        for line in path.read_text(encoding="utf-8").split("\n")
        if line.strip()
    ]
    used: set[str] = set()
    for row in rows:
        assert row["grading"].startswith(LEGACY_RULES) and "task" not in row
        rec = QARecord.of_label(row)
        grader = grader_for(rec)()
        used.add(grader.name)
        assert grader.grade(row["greedy"], rec).correct is row["correct"], row["id"]
        if row["samples"]:
            right = [grader.grade(s, rec).correct for s in row["samples"]]
            assert sum(map(bool, right)) / len(right) == pytest.approx(row["sample_accuracy"]), row["id"]
    assert len(rows) > 25_000 and used == {"alias", "choice", "abstain"}
