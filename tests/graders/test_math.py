"""The math grader on real GSM8K problems: the reply's final answer against the gold one, by math-verify."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from train.data import QARecord, load_records, shared_data_dir
from train.graders import grader_for
from train.graders.math import MathGrader
from train.label import Grading

GSM8K = shared_data_dir() / "gsm8k" / "test.jsonl"


@pytest.fixture(scope="module")
def problems() -> list[QARecord]:
    return load_records(GSM8K)[:64]


@pytest.fixture(scope="module")
def solutions() -> list[str]:
    """The reference solutions, which end with `#### <final answer>`."""
    with GSM8K.open(encoding="utf-8") as f:
        return [json.loads(line)["answer"] for line, _ in zip(f, range(64), strict=False)]


def test_the_loader_marks_gsm8k_as_math(problems: list[QARecord]) -> None:
    assert all(r.task == "math" and grader_for(r).name == "math" for r in problems)
    assert [r.answers for r in problems[:3]] == [["18"], ["3"], ["70000"]]  # the final answer, no commas


def test_each_reference_solution_is_right_for_its_problem_only(
    problems: list[QARecord], solutions: list[str]
) -> None:
    grader = MathGrader()
    for i, (problem, solution) in enumerate(zip(problems, solutions, strict=True)):
        assert grader.grade(solution, problem).correct is True, problem.id
        other = problems[(i + 1) % len(problems)]
        assert grader.grade(solution, other).correct is (other.answers == problem.answers), other.id


@pytest.mark.parametrize(
    ("row", "answer", "extracted", "correct"),
    [
        (0, "She makes 9 * 2 = 18 dollars.\n#### 18", "18", True),  # gold: 18
        (0, "\\boxed{18}", "18", True),
        (0, "Janet sells 9 eggs at $2 each, so the answer is 18. She keeps 7.", "18", True),
        (0, "16 - 3 - 4 = 9 eggs, and 9 * 2 = $18", "18", True),  # else the last number
        (0, "The answer is 18.00 dollars.", "18.00", True),  # equal as numbers
        (0, "The answer is $\\frac{36}{2}$.", "\\frac{36}{2}", True),  # equal as a fraction
        (0, "She gets \\boxed{5} one day\n#### 18", "18", True),  # `####` comes first
        (2, "The answer is 70,000.", "70000", True),  # gold: 70000
        (2, "#### $70,000", "70000", True),
        (61, "So he paid 1,430 dollars in all.", "1430", True),  # gold: 1430
        (0, "The answer is 17.", "17", False),  # a wrong number
        (0, "She sells 9 eggs for $2 each.", "2", False),  # the last number is not the final answer
        (0, "The answer is 1,8", "1.8", False),
        (0, "I do not know how many dollars she makes.", None, False),  # no number at all
        (0, "", None, False),  # malformed: nothing
        (0, "####", None, False),  # the marker with nothing after it
    ],
)
def test_the_final_answer_against_the_gold_one(
    problems: list[QARecord], row: int, answer: str, extracted: str | None, correct: bool
) -> None:
    result = MathGrader().grade(answer, problems[row])
    assert (result.correct, result.details["extracted"]) == (correct, extracted)
    assert result.details["gold"] == problems[row].answers[0]


@pytest.mark.parametrize(
    ("answer", "correct"),
    [
        ("0.5", True),
        ("\\boxed{\\frac{1}{2}}", True),
        ("1/2 of the cake", True),
        ("2/4", True),
        ("0.6", False),
    ],
)
def test_fractions_and_decimals_that_are_equal(tmp_path: Path, answer: str, correct: bool) -> None:
    """A user's own math file, in the canonical fields, with a fractional gold answer."""
    path = tmp_path / "mine.jsonl"
    path.write_text(
        json.dumps({"question": "Half of a cake is what share?", "answers": ["1/2"], "task": "math"})
    )
    [rec] = load_records(path)
    assert MathGrader().grade(answer, rec).correct is correct


def test_a_gold_answer_that_reads_as_no_value_is_not_graded() -> None:
    rec = QARecord(id="t", question="How many?", answers=["???"], source="t", task="math")
    result = MathGrader().grade("12", rec)
    assert result.correct is None and "no gold answer" in result.details["ungraded"]


def test_a_symbolic_gold_answer() -> None:
    rec = QARecord(
        id="t", question="The diagonal of a unit square?", answers=["\\sqrt{2}"], source="t", task="math"
    )
    assert MathGrader().grade("The diagonal is $\\sqrt{2}$.", rec).correct is True
    assert MathGrader().grade("\\boxed{\\frac{2}{\\sqrt{2}}}", rec).correct is True  # equal once simplified
    assert MathGrader().grade("The answer is 1.41", rec).correct is False  # not to 6 places


def test_labelling_records_the_rule_and_the_extracted_answer(problems: list[QARecord]) -> None:
    fields = Grading().fields("So the answer is 18.", problems[0])
    assert fields == {
        "correct": True,
        "grader": "math",
        "grading": MathGrader.rule,
        "grade_details": {"extracted": "18", "gold": "18"},
    }
    assert MathGrader.rule.startswith("math/v1: ")
    assert Grading().accuracy(["#### 18", "#### 17", "\\boxed{18}", "no idea"], problems[0]) == 0.5
