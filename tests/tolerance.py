"""How tests compare what the model computed twice: text and tokens exactly, floats within a tolerance.

The same weights on the same input give floats that differ in their last digits from one CPU to another
(the width of its vector instructions changes the order in which a matrix product sums), with the thread
count, and with the batch a row is computed in: float32 keeps about seven significant digits, and a
log-probability of -10.08403 read on two CPUs differs in its seventh. Greedy decoding picks the same tokens
unless two logits tie to within that noise, so text and token ids are compared exactly. The tolerance is
far below the differences the tests look for (an adapter applied or not, another prompt, another layer).

Values that are exact by construction are compared exactly: integers, and a float stored and read back
(a cached score, a saved history, a calibrator applied to the very float the server reported).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from localmodel.model import Draft

REL = 1e-4
ABS = 1e-5


def close(expected: Any) -> Any:
    """`expected` (a number, a sequence, a mapping or an array of them) within the model's float noise."""
    return pytest.approx(expected, rel=REL, abs=ABS)


def assert_same_drafts(got: Sequence[Draft], expected: Sequence[Draft]) -> None:
    """Drafts by the same weights: the same text, prompt, length and ending; log-probabilities within the
    float noise."""

    def exact(draft: Draft) -> tuple[str, int, int, str]:
        return draft.text, draft.prompt_tokens, draft.completion_tokens, draft.finish_reason

    assert [exact(d) for d in got] == [exact(d) for d in expected]
    for one, other in zip(got, expected, strict=True):
        assert one.token_logprobs == close(other.token_logprobs)
