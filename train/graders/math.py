"""Math word problems (GSM8K): the reply's final answer against the gold one, equal as numbers or as
expressions. HuggingFace's math-verify finds the final answer and compares: it reads LaTeX and plain
expressions (`\\boxed{}` first, then an answer after "the answer is" or "answer:", else the last number;
thousands separators, fractions, decimals and percentages) and tests equality numerically and with sympy.
The one thing added here is GSM8K's own marker: a reply that imitates its solutions ends with `#### 18`.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from train.graders.base import Grade, Grader

if TYPE_CHECKING:
    from train.data import QARecord

MARKER = "####"
TIMEOUT_S = 5
"""Per parse and per comparison; sympy can take unbounded time on an adversarial expression."""


def _timeout() -> int | None:
    # math-verify times out with SIGALRM, which Python allows only on the main thread; elsewhere it runs
    # without a limit rather than fail.
    return TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _parsed(text: str) -> list[Any]:
    from math_verify import parse  # sympy and an ANTLR parser: imported when a math answer is graded

    return list(parse(text, parsing_timeout=_timeout()))


def final_answer(answer: str) -> list[Any]:
    """math-verify's parse of the reply's final answer: [sympy value, the text it read], or [] if none."""
    marked = answer.rpartition(MARKER)[2] if MARKER in answer else answer
    return _parsed(marked)


def gold_values(gold: str) -> list[Any]:
    """A gold answer's values, read as LaTeX (math-verify's advice for gold answers: `18`, `1/2`,
    `\\frac{1}{2}`, `\\sqrt{2}`, `x^2+1`), else as plain text; none if neither reads a value."""
    for text in (f"${gold}$", gold):
        values = [v for v in _parsed(text) if not isinstance(v, str)]  # a str: text it could not read
        if values:
            return values
    return []


class MathGrader(Grader, name="math"):
    rule = (
        "math/v1: the reply's final answer (after its last '####', else as math-verify 0.9 extracts it: a "
        "\\boxed{} answer, else one after 'the answer is' or 'answer:', else the last number) equals a gold "
        "answer numerically (to 6 decimal places) or symbolically, by math-verify's verify; a reply without "
        "a number is wrong"
    )

    @classmethod
    def handles(cls, record: QARecord) -> bool:
        return record.task == "math"

    def grade(self, answer: str, record: QARecord) -> Grade:
        from math_verify import verify

        golds = [value for gold in record.answers for value in gold_values(gold)]
        if not golds:  # the record's fault, not the answer's: no label rather than a wrong one
            return Grade(
                None, self.rule, {"ungraded": f"no gold answer math-verify reads in {record.answers}"}
            )
        said = final_answer(answer)
        right = bool(said) and verify(golds, said, timeout_seconds=_timeout())
        # The text math-verify read the final answer from (the last item of a parse), and the gold value.
        return Grade(right, self.rule, {"extracted": str(said[-1]) if said else None, "gold": str(golds[0])})
