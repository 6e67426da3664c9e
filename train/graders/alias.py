"""Short factual answers (TriviaQA, NQ, Jeopardy...): a gold alias in the answer's first line."""

from __future__ import annotations

from typing import TYPE_CHECKING

from localmodel.answers import first_line, normalise
from train.graders.base import Grade, Grader

if TYPE_CHECKING:
    from train.data import QARecord


def contains(text: str, phrase: str) -> bool:
    """`phrase` inside `text` on word boundaries, both normalised (`localmodel.answers.normalise`)."""
    return bool(phrase) and f" {phrase} " in f" {text} "


class AliasGrader(Grader, name="alias"):
    rule = (
        "alias/v1: normalised gold alias contained (on word boundaries) in the normalised first line of the "
        "answer; aliases that already appear in the question are ignored (repeating the question is not "
        "knowing the answer)"
    )

    @classmethod
    def handles(cls, record: QARecord) -> bool:
        # Also every record no other grader claims, unless the labeller names another default.
        return record.task == "qa" and record.answerable

    def grade(self, answer: str, record: QARecord) -> Grade:
        said = normalise(first_line(answer))
        question = normalise(record.question)
        aliases = [a for a in map(normalise, record.answers) if a and not contains(question, a)]
        matched = next((alias for alias in aliases if contains(said, alias)), None)
        return Grade(matched is not None, self.rule, {"matched": matched})
