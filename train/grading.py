"""Is the model's answer correct? One rule per kind of question, recorded with every label it produced."""

from __future__ import annotations

import re

from localmodel.answers import first_line, normalise
from train.data import QARecord

RULE = (
    "alias-in-first-line/v1: normalised gold alias contained (on word boundaries) in the normalised "
    "first line of the answer; aliases that already appear in the question are ignored (repeating the "
    "question is not knowing the answer); multiple choice: the gold option and no other, or the gold "
    "letter first"
)
ABSTENTIONS = (
    "dont know", "do not know", "not sure", "cannot answer", "cant answer", "unable to answer",
    "cannot be answered", "cannot determine", "cant determine", "cannot be determined", "cant be determined",
    "impossible to determine", "impossible to tell", "cannot tell", "cant tell", "cannot say", "cant say",
    "not stated", "not state", "not mentioned", "not mention", "doesnt mention", "not specified",
    "not specify", "not provided", "not given", "not say", "doesnt say", "doesnt state", "no information",
    "not enough information", "insufficient information", "unanswerable",
)  # fmt: skip
"""Normalised, so without punctuation: "don't know" reads "dont know"; matched on word boundaries."""
ABSTAIN_RULE = (
    "abstains-in-first-line/v1: asked with another question's passage, an answer is correct only if "
    "the normalised first line contains (on word boundaries) one of: " + "; ".join(ABSTENTIONS)
)
_LETTER = re.compile(r"\b([A-E])\b")


def _contains(text: str, phrase: str) -> bool:
    return bool(phrase) and f" {phrase} " in f" {text} "


def rule_for(record: QARecord) -> str:
    return RULE if record.answerable else ABSTAIN_RULE


def abstains(answer: str) -> bool:
    said = normalise(first_line(answer))
    return any(_contains(said, phrase) for phrase in ABSTENTIONS)


def is_correct(answer: str, record: QARecord) -> bool:
    if not record.answerable:
        return abstains(answer)
    line = first_line(answer)
    if record.choices and all(len(c) == 1 for c in record.choices):
        letters = _LETTER.findall(line)
        return bool(letters) and letters[0] == record.answers[0]
    said = normalise(line)
    if record.choices:
        gold = normalise(record.answers[0])
        others = [normalise(c) for c in record.choices if normalise(c) != gold]
        # An option named inside the gold one ("no" in "no, never") does not count against it.
        return _contains(said, gold) and not any(
            _contains(said, o) and not _contains(gold, o) for o in others
        )
    question = normalise(record.question)
    aliases = [a for a in map(normalise, record.answers) if a and not _contains(question, a)]
    return any(_contains(said, alias) for alias in aliases)
