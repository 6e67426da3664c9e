"""The committed family labels (train/labels/*-families.jsonl) are what their graders say today: every math
and instructions row graded again gives its recorded verdict and rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from train.data import QARecord
from train.graders import grader_for

LABELS = Path(__file__).parents[2] / "train" / "labels"


@pytest.mark.parametrize("task", ["math", "instructions"])
def test_the_family_labels_grade_the_same_again(task: str) -> None:
    rows = [
        row
        for path in sorted(LABELS.glob("*-families.jsonl"))
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and (row := json.loads(line))["task"] == task
    ]
    assert len(rows) >= 100
    for row in rows:
        record = QARecord.of_label(row)
        grader = grader_for(record)()
        grade = grader.grade(row["greedy"], record)
        assert (grade.correct, grader.rule) == (row["correct"], row["grading"]), row["id"]
