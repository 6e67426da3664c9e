"""The choice grader on real multiple-choice and yes/no questions: the gold option and no other, or, where
the options are letters in the question, the gold letter first."""

from __future__ import annotations

import pytest

from train.data import QARecord, load_records, shared_data_dir
from train.graders import grader_for
from train.graders.choice import ChoiceGrader

DATA = shared_data_dir()


@pytest.fixture(scope="module")
def rows() -> dict[str, QARecord]:
    files = [DATA / "multiple_choice" / f"{name}.jsonl" for name in ("arc_easy", "boolq", "commonsense_qa")]
    records = [r for path in files for r in load_records(path)[:3]]
    records += load_records(DATA / "pubmedqa" / "pubmed_qa_labeled.jsonl")[:3]
    assert all(grader_for(r).name == "choice" for r in records)
    return {r.id: r for r in records}


@pytest.mark.parametrize(
    ("row", "answer", "correct"),
    [
        ("arc_easy:1", "A breathing mask.", True),  # gold: breathing mask
        ("arc_easy:1", "Breathing mask, or safety goggles", False),  # two options named: no answer
        ("arc_easy:1", "Safety goggles\nbreathing mask", False),  # the first line decides
        ("arc_easy:2", "ovary cells", True),
        ("arc_easy:2", "In the brain cells.", False),
        ("boolq:0", "No.", True),  # gold: no
        ("boolq:0", "Yes, or no.", False),
        ("boolq:1", "Yes, they are the same tax.", True),
        ("pubmed_qa_labeled:1", "No", True),  # gold: no, among yes, no and maybe
        ("pubmed_qa_labeled:1", "Maybe", False),
        ("commonsense_qa:2", "B. bookstore", True),  # gold: B, the options lettered in the question
        ("commonsense_qa:2", "The answer is B", True),  # the first standalone capital A-E
        ("commonsense_qa:2", "A bookstore", False),  # an article "A" reads as the letter A
        ("commonsense_qa:2", "D. mortuary, not B", False),  # the first letter decides
        ("commonsense_qa:2", "bookstore", False),  # lettered options are answered by letter
        ("boolq:0", "", False),  # malformed: nothing said
        ("commonsense_qa:2", "???", False),
    ],
)
def test_the_gold_option_and_no_other(
    rows: dict[str, QARecord], row: str, answer: str, correct: bool
) -> None:
    assert ChoiceGrader().grade(answer, rows[row]).correct is correct


def test_an_option_inside_the_gold_one_does_not_count_against_it() -> None:
    rec = QARecord(
        id="t", question="Ever?", answers=["no, never"], choices=["no", "no, never", "yes"], source="t"
    )
    assert ChoiceGrader().grade("No, never.", rec).correct is True
    assert ChoiceGrader().grade("No, never. Yes.", rec).correct is False


def test_details_record_what_was_chosen(rows: dict[str, QARecord]) -> None:
    grader = ChoiceGrader()
    assert grader.grade("B. bookstore", rows["commonsense_qa:2"]).details == {"letter": "B"}
    assert grader.grade("no idea", rows["commonsense_qa:2"]).details == {"letter": None}
    named = grader.grade("breathing mask, not safety goggles", rows["arc_easy:1"]).details
    assert named == {"named": ["safety goggles", "breathing mask"]}
    assert grader.grade("x", rows["boolq:0"]).rule.startswith("choice/v1: ")


def test_a_record_without_options_is_not_graded() -> None:
    rec = QARecord(id="t", question="Capital of Peru?", answers=["Lima"], source="t", grader="choice")
    result = grader_for(rec)().grade("Lima", rec)
    assert result.correct is None and result.details == {"ungraded": "the record has no choices"}
