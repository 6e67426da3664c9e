"""The abstain grader on real passage questions asked with another question's passage: only saying that
the passage does not answer is right."""

from __future__ import annotations

import pytest

from train.data import context_variants, load_records, shared_data_dir
from train.graders import grader_for
from train.graders.abstain import AbstainGrader

DATA = shared_data_dir()


@pytest.fixture(scope="module")
def mismatched() -> list:
    records = load_records(DATA / "multiple_choice" / "boolq.jsonl")[:6]
    return [r for r in context_variants(records, seed=0) if r.context_variant == "other"]


@pytest.mark.parametrize(
    ("answer", "correct", "phrase"),
    [
        ("I don't know.", True, "dont know"),
        ("The passage does not say whether it does.", True, "not say"),
        ("Unanswerable from this text.", True, "unanswerable"),
        ("no", False, None),  # the gold option of its own passage is wrong here
        ("Yes.\nThe passage is not specific, though.", False, None),  # the first line decides
        ("", False, None),  # malformed: silence is no abstention
    ],
)
def test_only_abstaining_is_right(mismatched: list, answer: str, correct: bool, phrase: str | None) -> None:
    for record in mismatched:
        assert grader_for(record).name == "abstain"
        result = AbstainGrader().grade(answer, record)
        assert (result.correct, result.details) == (correct, {"abstention": phrase})
        assert result.rule.startswith("abstain/v1: ")
