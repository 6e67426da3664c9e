"""Comparing free-form answers: one normalisation for grading and for self-consistency."""

from __future__ import annotations

import re
import string
import unicodedata

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation + "\u2018\u2019\u201c\u201d")


def normalise(text: str) -> str:
    """Lower-case, no punctuation, no articles, single spaces (the SQuAD / TriviaQA convention)."""
    text = unicodedata.normalize("NFKC", text).lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def first_line(text: str) -> str:
    return next((line for line in text.strip().splitlines() if line.strip()), "")


def same_answer(a: str, b: str) -> bool:
    """Two answers agree when their normalised first lines are equal or one contains the other."""
    left, right = normalise(first_line(a)), normalise(first_line(b))
    if not left or not right:
        return left == right
    return left == right or f" {left} " in f" {right} " or f" {right} " in f" {left} "
