"""A passage question asked with another question's passage (`--context-variants`): the passage cannot
answer it, so the one right answer is to say so."""

from __future__ import annotations

from typing import TYPE_CHECKING

from localmodel.answers import first_line, normalise
from train.graders.alias import contains
from train.graders.base import Grade, Grader

if TYPE_CHECKING:
    from train.data import QARecord

ABSTENTIONS = (
    "dont know", "do not know", "not sure", "cannot answer", "cant answer", "unable to answer",
    "cannot be answered", "cannot determine", "cant determine", "cannot be determined", "cant be determined",
    "impossible to determine", "impossible to tell", "cannot tell", "cant tell", "cannot say", "cant say",
    "not stated", "not state", "not mentioned", "not mention", "doesnt mention", "not specified",
    "not specify", "not provided", "not given", "not say", "doesnt say", "doesnt state", "no information",
    "not enough information", "insufficient information", "unanswerable",
)  # fmt: skip
"""Normalised, so without punctuation: "don't know" reads "dont know"; matched on word boundaries."""


def abstention(answer: str) -> str | None:
    """The abstaining phrase in the answer's first line, if there is one."""
    said = normalise(first_line(answer))
    return next((phrase for phrase in ABSTENTIONS if contains(said, phrase)), None)


class AbstainGrader(Grader, name="abstain"):
    rule = (
        "abstain/v1: asked with another question's passage, an answer is correct only if the normalised "
        "first line contains (on word boundaries) one of: " + "; ".join(ABSTENTIONS)
    )

    @classmethod
    def handles(cls, record: QARecord) -> bool:
        return record.context_variant == "other"

    def grade(self, answer: str, record: QARecord) -> Grade:
        phrase = abstention(answer)
        return Grade(phrase is not None, self.rule, {"abstention": phrase})
