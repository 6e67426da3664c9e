"""The two thresholds of a pick policy, chosen by the rule docs/routing.md states, on rows worked by hand."""

from __future__ import annotations

import numpy as np

from train.pick_thresholds import pick_thresholds

# Per question: is each target right, and its confidence; the cheap target first.
CORRECT = np.array([[1, 1], [0, 1], [0, 0], [0, 1], [1, 0]], dtype=float)
CONFIDENCES = np.array([[0.9, 0.9], [0.1, 0.8], [0.005, 0.004], [0.3, 0.6], [0.03, 0.01]])


def test_min_confidence_is_the_smallest_step_reaching_95_percent_of_the_best_target() -> None:
    # Always the dear target: 3 of 5 right. At 0.10 the cheap one keeps question 2 (wrong): 2 of 5;
    # at 0.11 question 2 goes to the dear target: 3 of 5, the first step at 95% of 0.6.
    chosen = pick_thresholds(CORRECT, CONFIDENCES)
    assert chosen["always_best_accuracy"] == 0.6
    assert chosen["pick"] == {"min_confidence": 0.11, "accuracy": 0.6, "share": [0.8, 0.2]}


def test_the_refuse_cut_is_the_largest_that_refuses_no_question_someone_answers_right() -> None:
    # Question 5 is right for the cheap target at 0.03: 0.05 would refuse it, 0.03 does not.
    chosen = pick_thresholds(CORRECT, CONFIDENCES)
    assert chosen["refuse_below"] == 0.03
    assert chosen["refused_share"] == 0.2


def test_none_when_no_step_reaches_the_goal_and_no_cut_is_safe() -> None:
    # The cheap target is sure exactly where it is wrong, so no threshold sends those questions on; the
    # question it answers right has every confidence below 0.01, so every cut would refuse it.
    correct = np.array([[0, 1], [0, 1], [1, 0]], dtype=float)
    confidences = np.array([[0.9, 0.1], [0.9, 0.1], [0.005, 0.001]])
    chosen = pick_thresholds(correct, confidences)
    assert chosen["pick"] is None and chosen["refuse_below"] is None
