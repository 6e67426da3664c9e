"""Is the model's answer correct? One rule, recorded with every label it produced."""

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
_LETTER = re.compile(r"\b([A-E])\b")


def _contains(text: str, phrase: str) -> bool:
    return bool(phrase) and f" {phrase} " in f" {text} "


def is_correct(answer: str, record: QARecord) -> bool:
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
