"""The pick action: the cheapest candidate likely enough to be right, a stated fallback, and its checks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from policies import Confidences, Decision, PolicyError, RequestFacts, decide, load_policy

TWO_MODELS = """\
scorer: {method: head, adapter: scorer, targets: {small: model-s, large: model-l}}
targets:
  small: {kind: local}
  large:
    kind: litellm
    model: openai/large
    cost: {input_per_million: 0.5, output_per_million: 1.5}
  unpriced: {kind: litellm, model: openai/self-hosted}
rules:
  - name: nobody-knows
    when: {confidence_below: 0.2, confidence_of: best}
    action: refuse
  - name: cheapest-likely
    action: pick
    min_confidence: 0.5
    fallback: FALLBACK
"""


@pytest.fixture
def two_models(write_policy: Callable[[str], Path], tmp_path: Path) -> Callable[[str], Path]:
    (tmp_path / "scorer").mkdir()
    card = {
        "method": "head",
        "base_model": "model-s",
        "targets": [{"model": "model-s"}, {"model": "model-l"}],
    }
    (tmp_path / "scorer" / "scorer.json").write_text(json.dumps(card))
    return lambda fallback: write_policy(TWO_MODELS.replace("FALLBACK", fallback))


def decided(path: Path, small: float, large: float, prices: dict[str, float] | None = None) -> Decision:
    async def known() -> Confidences:
        return Confidences(small, {"small": small, "large": large})

    policy = load_policy(path)
    return asyncio.run(decide(policy, RequestFacts("router"), known, prices=prices or {"large": 2.0}))


@pytest.mark.parametrize(
    ("small", "large", "fallback", "expected"),
    [
        (0.6, 0.9, "most_likely", ("answer_with", "small", 0.6)),  # the cheapest likely enough wins
        (0.5, 0.9, "most_likely", ("answer_with", "small", 0.5)),  # the threshold is inclusive
        (0.3, 0.7, "most_likely", ("escalate_to", "large", 0.7)),
        (0.3, 0.4, "most_likely", ("escalate_to", "large", 0.4)),  # none: the most likely
        (0.45, 0.3, "most_likely", ("answer_with", "small", 0.45)),
        (0.3, 0.4, "hedge", ("hedge", "large", 0.4)),
        (0.3, 0.4, "refuse", ("refuse", None, 0.4)),
        (0.1, 0.15, "most_likely", ("refuse", None, 0.15)),  # an earlier rule on the best confidence
    ],
)
def test_pick_takes_the_cheapest_target_likely_enough_to_be_right(
    two_models: Callable[[str], Path], small: float, large: float, fallback: str, expected: tuple
) -> None:
    decision = decided(two_models(fallback), small, large)
    assert (decision.action, decision.target, decision.confidence) == expected


def test_pick_reports_every_candidate_cheapest_first(two_models: Callable[[str], Path]) -> None:
    decision = decided(two_models("most_likely"), 0.3, 0.7)
    assert list((decision.confidences or {}).items()) == [("small", 0.3), ("large", 0.7)]
    assert decision.rule == "cheapest-likely" and decision.outcome == "escalate"
    hedged = decided(two_models("hedge"), 0.3, 0.4)
    assert hedged.message is not None and "{answer}" in hedged.message


def test_pick_orders_candidates_by_price_not_by_listing(two_models: Callable[[str], Path]) -> None:
    # With the local target priced above the remote one, the remote one is tried first.
    decision = decided(two_models("most_likely"), 0.9, 0.6, prices={"small": 3.0, "large": 2.0})
    assert (decision.action, decision.target) == ("answer_with", "large")


def expect_problems(path: Path) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    return [line.removeprefix(f"{path}:") for line in caught.value.problems]


def test_pick_and_mapping_mistakes_name_line_and_field(
    two_models: Callable[[str], Path], write_policy: Callable[[str], Path]
) -> None:
    text = two_models("most_likely").read_text()
    text = text.replace("large: model-l}", "large: model-x, nowhere: model-s}")
    text = text.replace("confidence_of: best", "confidence_of: unpriced")
    text = text.replace(
        "    min_confidence: 0.5\n", "    candidates: [small, unpriced, ghost]\n    target: small\n"
    )
    bad = two_models("most_likely").with_name("bad.yaml")
    bad.write_text(text)
    assert expect_problems(bad) == [
        "1: scorer.targets.nowhere: unknown target 'nowhere' (targets: small, large, unpriced)",
        "1: scorer.targets.large: the scorer predicts no 'model-x' (it predicts: model-s, model-l)",
        "11: rules.0.when.confidence_of: 'unpriced' is not a target the scorer predicts "
        "(map it in scorer.targets, or use 'best')",
        "13: rules.1.min_confidence: pick needs min_confidence",
        "15: rules.1.candidates.1: the scorer predicts nothing for 'unpriced': map it to a scorer target "
        "in scorer.targets",
        "15: rules.1.candidates.2: unknown target 'ghost' (targets: small, large, unpriced)",
        "16: rules.1.target: pick takes no target",
    ]


def test_only_pick_takes_candidates(write_policy: Callable[[str], Path]) -> None:
    path = write_policy(
        "targets: {local: {kind: local}}\n"
        "rules:\n  - action: answer_with\n    target: local\n    min_confidence: 0.3\n"
    )
    assert expect_problems(path) == [
        "5: rules.0.min_confidence: answer_with takes no min_confidence (only pick does)"
    ]


def test_an_unknown_scorer_method_lists_the_registered_ones(write_policy: Callable[[str], Path]) -> None:
    path = write_policy(
        "scorer: {method: magic}\ntargets: {local: {kind: local}}\nrules: [{action: refuse}]\n"
    )
    [problem] = expect_problems(path)
    assert problem.startswith("1: scorer.method: Value error, unknown scorer method 'magic' (known: ")
    assert all(name in problem for name in ("head", "intrinsic", "nprob", "consistency"))


def test_a_budgeted_rule_tests_the_primary_confidence(two_models: Callable[[str], Path]) -> None:
    text = (
        two_models("most_likely")
        .read_text()
        .replace("    action: refuse\n", "    action: escalate_to\n    target: large\n")
    )
    path = two_models("most_likely").with_name("budget.yaml")
    path.write_text("target_escalation_rate: 0.2\n" + text)
    assert expect_problems(path) == [
        "12: rules.0.when.confidence_of: the budget follows the scorer's primary confidence; this rule must "
        "test that one"
    ]
