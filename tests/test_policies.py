"""The policy language: loading, line-accurate errors, first-match evaluation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from policies import DEFAULT_POLICY_PATH, Confidences, Policy, PolicyError, RequestFacts, decide, load_policy

EXAMPLES = sorted((Path(__file__).parents[1] / "policies" / "examples").glob("*.yaml"))

CASCADE = """\
version: 1
targets:
  local: {kind: local}
  large: {kind: litellm, model: openai/gpt-4o-mini}
rules:
  - name: vip
    when: {user: vip}
    action: escalate_to
    target: large
  - name: unsure
    when: {confidence_below: 0.3}
    action: refuse
  - name: middling
    when: {confidence_at_least: 0.3, confidence_below: 0.6}
    action: hedge
  - name: sure
    action: answer_with
    target: local
"""


def run_decide(policy: Policy, confidence: float, model: str = "router", user: str | None = None):
    calls = []

    async def score() -> Confidences:
        calls.append(1)
        return Confidences(confidence)

    decision = asyncio.run(decide(policy, RequestFacts(model, user), score))
    return decision, len(calls)


@pytest.mark.parametrize("path", [DEFAULT_POLICY_PATH, *EXAMPLES], ids=lambda p: p.name)
def test_shipped_policies_validate(path: Path) -> None:
    policy = load_policy(path)
    assert policy.rules[-1].when.is_empty


def test_there_are_example_policies() -> None:
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize(
    ("confidence", "rule", "action", "target"),
    [
        (0.0, "unsure", "refuse", None),
        (0.2999, "unsure", "refuse", None),
        (0.3, "middling", "hedge", "local"),  # lower bounds are inclusive, upper bounds exclusive
        (0.5999, "middling", "hedge", "local"),
        (0.6, "sure", "answer_with", "local"),
        (1.0, "sure", "answer_with", "local"),
    ],
)
def test_first_matching_rule_wins(
    write_policy: Callable[[str], Path], confidence: float, rule: str, action: str, target: str | None
) -> None:
    decision, scored = run_decide(load_policy(write_policy(CASCADE)), confidence)
    assert (decision.rule, decision.action, decision.target) == (rule, action, target)
    assert decision.confidence == confidence
    assert scored == 1


def test_rules_on_request_fields_need_no_score(write_policy: Callable[[str], Path]) -> None:
    decision, scored = run_decide(load_policy(write_policy(CASCADE)), 0.9, user="vip")
    assert (decision.action, decision.target, decision.confidence) == ("escalate_to", "large", None)
    assert decision.outcome == "escalate"
    assert scored == 0


def test_confidence_is_scored_once_across_rules(write_policy: Callable[[str], Path]) -> None:
    _, scored = run_decide(load_policy(write_policy(CASCADE)), 0.9)
    assert scored == 1


def test_refuse_and_hedge_messages_come_from_policy(write_policy: Callable[[str], Path]) -> None:
    policy = load_policy(write_policy(CASCADE))
    refused, _ = run_decide(policy, 0.1)
    hedged, _ = run_decide(policy, 0.4)
    assert refused.message == policy.refusal_message
    assert hedged.message == policy.hedge_template


def expect_problems(write_policy: Callable[[str], Path], text: str) -> list[str]:
    path = write_policy(text)
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert all(line.startswith(f"{path}:") for line in caught.value.problems)
    return [line.removeprefix(f"{path}:") for line in caught.value.problems]


def test_schema_errors_name_line_and_field(write_policy: Callable[[str], Path]) -> None:
    problems = expect_problems(
        write_policy,
        """\
version: 1
targets:
  local:
    kind: local
  big:
    kind: litellm
    modle: x
rules:
  - when: {confidence_below: 1.5}
    action: escalate_to
    target: big
  - action: hedgee
""",
    )
    assert problems == [
        "5: targets.big.model: Field required",
        "7: targets.big.modle: Extra inputs are not permitted",
        "9: rules.0.when.confidence_below: Input should be less than or equal to 1",
        "12: rules.1.action: Input should be 'answer_with', 'escalate_to', 'hedge', 'refuse' or 'pick'",
    ]


def test_cross_field_errors_name_line_and_field(write_policy: Callable[[str], Path]) -> None:
    problems = expect_problems(
        write_policy,
        """\
targets:
  local: {kind: local}
rules:
  - when: {confidence_below: 0.5, confidence_at_least: 0.5}
    action: escalate_to
    target: large
  - when: {model: gpt-5}
    action: answer_with
  - action: refuse
    target: local
    when: {user: x}
""",
    )
    assert problems == [
        "4: rules.0.when: confidence_at_least 0.5 >= confidence_below 0.5: never matches",
        "6: rules.0.target: unknown target 'large' (targets: local)",
        "7: rules.1.target: answer_with needs a target",
        "7: rules.1.when.model.0: 'gpt-5' is not a model this policy serves",
        "10: rules.2.target: refuse takes no target",
        "11: rules.2.when: the last rule must have no conditions, so that every request matches a rule",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("targets: [1, 2\n", ":2: (yaml): expected ',' or ']', but got '<stream end>'"),
        ("- just a list\n", ":1: (top level): a policy must be a YAML mapping"),
        ("", ":1: (top level): a policy must be a YAML mapping"),
    ],
)
def test_unreadable_policies(write_policy: Callable[[str], Path], text: str, expected: str) -> None:
    path = write_policy(text)
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert caught.value.problems == [f"{path}{expected}"]


def test_missing_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "nope.yaml")
