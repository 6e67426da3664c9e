"""Multiple choice and yes/no (ARC, OpenBookQA, CommonsenseQA, BoolQ, PubMedQA): the gold option alone, or
the gold letter first."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from localmodel.answers import first_line, normalise
from train.graders.alias import contains
from train.graders.base import Grade, Grader

if TYPE_CHECKING:
    from train.data import QARecord

_LETTER = re.compile(r"\b([A-E])\b")


class ChoiceGrader(Grader, name="choice"):
    rule = (
        "choice/v1: the normalised first line of the answer names the gold option (on word boundaries) and "
        "no other (an option contained in the gold one does not count against it); with single-letter "
        "options (the lettered options are in the question), the first capital letter A-E on that line is "
        "the gold one"
    )

    @classmethod
    def handles(cls, record: QARecord) -> bool:
        # A question asked with another question's passage is graded on abstaining instead (abstain.py).
        return bool(record.choices) and record.answerable

    def grade(self, answer: str, record: QARecord) -> Grade:
        if not record.choices:
            return Grade(None, self.rule, {"ungraded": "the record has no choices"})
        line = first_line(answer)
        if all(len(c) == 1 for c in record.choices):
            letters = _LETTER.findall(line)
            chosen = letters[0] if letters else None
            return Grade(chosen == record.answers[0], self.rule, {"letter": chosen})
        said = normalise(line)
        gold = normalise(record.answers[0])
        named = [c for c in record.choices if contains(said, normalise(c))]
        # An option named inside the gold one ("no" in "no, never") does not count against it.
        others = [c for c in named if normalise(c) != gold and not contains(gold, normalise(c))]
        return Grade(contains(said, gold) and not others, self.rule, {"named": named})
