"""Actions, conditions and target kinds are extension points: a class defined here registers itself and a
policy file can use it at once; unknown names are located errors; the shipped actions shape text as the
router needs."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest
from pydantic import Field

from policies import (
    ACTIONS,
    CONDITIONS,
    TARGET_KINDS,
    Action,
    Condition,
    Confidences,
    Cost,
    Decision,
    Location,
    Policy,
    PolicyError,
    RequestFacts,
    Target,
    When,
    action,
    decide,
    load_policy,
)
from policies.conditions import refresh_when
from policies.targets import refresh_targets
from policies.views import PolicyView, RuleView

TEAMS = """\
targets:
  local: {kind: local}
rules:
  - name: teams
    when: {user_prefix: team-}
    action: shout
    target: local
  - action: answer_with
    target: local
"""


@pytest.fixture
def shout() -> Iterator[type[Action]]:
    """An action that answers with the rule's target, in capitals."""

    class Shout(Action, name="shout"):
        outcome = "answer"
        takes = frozenset({"target"})

        @classmethod
        def problems(cls, policy: PolicyView, index: int, rule: RuleView) -> Iterator[tuple[Location, str]]:
            if rule.target is None:
                yield ("rules", index, "target"), "shout needs a target"
            yield from super().problems(policy, index, rule)

        @classmethod
        def shape(cls, answer: str, decision: Decision) -> str:
            return answer.upper()

        @classmethod
        def stream_prefix(cls, decision: Decision) -> str | None:
            return None

    yield Shout
    del ACTIONS["shout"]


@pytest.fixture
def user_prefix() -> Iterator[type[Condition]]:
    """A condition on the start of the request's user."""

    class UserPrefix(Condition, name="user_prefix"):
        fields: ClassVar[dict[str, Any]] = {"user_prefix": (str | None, Field(None, min_length=1))}

        @classmethod
        def matches(
            cls, when: When, facts: RequestFacts, known: Confidences | None, threshold: float | None
        ) -> bool:
            return facts.user is not None and facts.user.startswith(when.user_prefix)

        @classmethod
        def problems(cls, policy: PolicyView, index: int, rule: RuleView) -> Iterator[tuple[Location, str]]:
            prefix, users = rule.when.user_prefix, rule.when.user
            if prefix is not None and users is not None and not any(u.startswith(prefix) for u in users):
                yield ("rules", index, "when"), f"no listed user starts with '{prefix}': never matches"

    yield UserPrefix
    del CONDITIONS["user_prefix"]
    refresh_when()


@pytest.fixture
def echo_kind() -> Iterator[type[Target]]:
    """A target kind's spec (its answerer would be one module of router/targets/)."""

    class EchoTarget(Target):
        kind: Literal["echo"]
        prefix: str = Field("", max_length=8)
        cost: Cost | None = None

    yield EchoTarget
    del TARGET_KINDS["echo"]
    refresh_targets()


ECHO = """\
targets:
  local: {kind: local}
  echo:
    kind: echo
    prefix: "> "
    fallbacks: [local]
rules:
  - action: answer_with
    target: echo
"""


def decided(policy: Policy, user: str | None) -> tuple[Decision, int]:
    calls = []

    async def score() -> Confidences:
        calls.append(1)
        return Confidences(0.5)

    return asyncio.run(decide(policy, RequestFacts("router", user), score)), len(calls)


def problems_of(path: Path) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    return [line.removeprefix(f"{path}:") for line in caught.value.problems]


@pytest.mark.usefixtures("shout", "user_prefix")
@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("team-a", ("teams", "shout", "answer")),
        ("alice", ("rules[1]", "answer_with", "answer")),
        (None, None),
    ],
)
def test_a_new_action_and_condition_route_a_policy_file(
    write_policy: Callable[[str], Path], user: str | None, expected: tuple[str, str, str] | None
) -> None:
    policy = load_policy(write_policy(TEAMS))
    assert policy.rules[0].when.user_prefix == "team-"
    decision, scored = decided(policy, user)
    assert (decision.rule, decision.action, decision.outcome) == (
        expected or ("rules[1]", "answer_with", "answer")
    )
    assert decision.target == "local"
    assert scored == 0  # neither the condition nor the action reads a confidence


def test_a_new_action_shapes_the_answer(write_policy: Callable[[str], Path], shout: type[Action]) -> None:
    text = TEAMS.replace("when: {user_prefix: team-}", "when: {user: team-a}")
    decision, _ = decided(load_policy(write_policy(text)), "team-a")
    assert action(decision.action) is shout
    assert shout.shape("paris", decision) == "PARIS"
    assert shout.stream_prefix(decision) is None


@pytest.mark.usefixtures("shout", "user_prefix")
def test_new_names_report_their_own_problems_by_line_and_field(write_policy: Callable[..., Path]) -> None:
    path = write_policy(
        """\
targets:
  local: {kind: local}
rules:
  - when: {user_prefix: team-, user: [alice, bob]}
    action: shout
    message: HELLO
  - action: answer_with
    target: local
"""
    )
    assert problems_of(path) == [
        "4: rules.0.target: shout needs a target",
        "4: rules.0.when: no listed user starts with 'team-': never matches",
        "6: rules.0.message: shout takes no message",
    ]
    empty = write_policy(TEAMS.replace("user_prefix: team-", 'user_prefix: ""'), "empty.yaml")
    assert problems_of(empty) == ["5: rules.0.when.user_prefix: String should have at least 1 character"]


@pytest.mark.usefixtures("shout")
def test_a_registered_action_is_listed_among_the_known(write_policy: Callable[[str], Path]) -> None:
    path = write_policy("targets:\n  local: {kind: local}\nrules:\n  - action: whisper\n")
    assert problems_of(path) == [
        "4: rules.0.action: Input should be "
        "'answer_with', 'escalate_to', 'hedge', 'refuse', 'shout' or 'pick'"
    ]


def test_a_new_target_kind_loads_with_its_own_fields(
    write_policy: Callable[..., Path], echo_kind: type[Target]
) -> None:
    echo = load_policy(write_policy(ECHO)).targets["echo"]
    assert isinstance(echo, echo_kind)
    assert echo.model_dump() == {"fallbacks": ["local"], "kind": "echo", "prefix": "> ", "cost": None}
    long = write_policy(ECHO.replace('prefix: "> "', "prefix: ten-chars!"), "long.yaml")
    assert problems_of(long) == ["5: targets.echo.prefix: String should have at most 8 characters"]
    unknown = write_policy(ECHO.replace("kind: echo", "kind: nope"), "unknown.yaml")
    assert problems_of(unknown) == [
        "3: targets.echo: Input tag 'nope' found using 'kind' does not match any of the expected tags: "
        "'local', 'echo', 'litellm', 'openai'"
    ]


def test_an_unregistered_target_kind_is_a_located_error(write_policy: Callable[[str], Path]) -> None:
    """Also once the kind above is removed: the policy using it is rejected again."""
    assert "echo" not in TARGET_KINDS
    assert problems_of(write_policy(ECHO)) == [
        "3: targets.echo: Input tag 'echo' found using 'kind' does not match any of the expected tags: "
        "'local', 'litellm', 'openai'"
    ]


def test_unknown_actions_and_conditions_are_located_errors(write_policy: Callable[[str], Path]) -> None:
    path = write_policy(
        """\
targets:
  local: {kind: local}
rules:
  - when:
      user_prefix: team-
    action: shout
  - action: answer_with
    target: local
"""
    )
    assert problems_of(path) == [
        "5: rules.0.when.user_prefix: Extra inputs are not permitted",
        "6: rules.0.action: Input should be 'answer_with', 'escalate_to', 'hedge', 'refuse' or 'pick'",
    ]
    with pytest.raises(ValueError, match=r"unknown action 'shout' \(known: answer_with, escalate_to, "):
        action("shout")


def test_names_and_when_fields_register_once(user_prefix: type[Condition]) -> None:
    with pytest.raises(TypeError, match="action 'hedge' is already registered by Hedge"):

        class Hedge(Action, name="hedge"):
            outcome = "hedge"

    with pytest.raises(TypeError, match=r"when\.user_prefix is already a field of the user_prefix condition"):

        class Prefix(Condition, name="prefix"):
            fields: ClassVar[dict[str, Any]] = {"user_prefix": (str | None, None)}

    with pytest.raises(TypeError, match="target kind 'local' is already registered by LocalTarget"):

        class Local(Target):
            kind: Literal["local"]
            cost: Cost | None = None

    with pytest.raises(TypeError, match="target kind 'free' declares no cost"):

        class Free(Target):
            kind: Literal["free"]

    assert ACTIONS["hedge"].__module__ == "policies.actions.hedge"
    assert "prefix" not in CONDITIONS
    assert TARGET_KINDS["local"].__module__ == "policies.targets.local"
    assert "free" not in TARGET_KINDS


def hedged(template: str) -> Decision:
    return Decision("hedge", "local", "unsure", 0.4, template, 0)


@pytest.mark.parametrize(
    ("template", "shaped", "prefix"),
    [
        ("Not sure: {answer}", "Not sure: {x} Paris", "Not sure: "),  # braces in answers stay as they are
        ("{answer} (unsure)", "{x} Paris (unsure)", None),
        ("{answer}? {answer}!", "{x} Paris? {x} Paris!", None),
    ],
)
def test_hedge_shapes_the_answer_and_streams_after_its_prefix(
    template: str, shaped: str, prefix: str | None
) -> None:
    hedge = action("hedge")
    assert hedge.shape("{x} Paris", hedged(template)) == shaped
    assert hedge.stream_prefix(hedged(template)) == prefix


def test_shipped_actions_say_what_the_router_does_with_them() -> None:
    answered = Decision("answer_with", "local", "sure", 0.9, None, 1)
    refused = Decision("refuse", None, "unsure", 0.1, "I won't guess.", 0)
    outcomes = {name: getattr(cls, "outcome", None) for name, cls in ACTIONS.items()}
    assert outcomes == {
        "answer_with": "answer",
        "escalate_to": "escalate",
        "hedge": "hedge",
        "pick": None,  # its decisions carry the action it chose
        "refuse": "refuse",
    }
    assert [name for name, cls in ACTIONS.items() if cls.needs_confidence] == ["pick"]
    assert [name for name, cls in ACTIONS.items() if not cls.generates] == ["refuse"]
    assert (
        action("answer_with").shape("Paris", answered),
        action("answer_with").stream_prefix(answered),
    ) == (
        "Paris",
        "",
    )
    assert (action("refuse").shape("", refused), action("refuse").stream_prefix(refused)) == (
        "I won't guess.",
        None,
    )
    with pytest.raises(ValueError, match="unknown action 'shrug'"):
        Decision("shrug", None, "r", None, None, 0)
    with pytest.raises(ValueError, match="pick chooses another action"):
        Decision("pick", "local", "r", None, None, 0)


def test_policies_import_no_layer_above_them() -> None:
    imported = subprocess.run(
        [sys.executable, "-c", "import sys, policies; print(' '.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    above = ("scorers", "router", "localmodel", "train", "commands", "torch")
    assert [name for name in imported if name.split(".")[0] in above] == []


def test_router_policy_validate_reports_the_scorer_checks(write_policy: Callable[..., Path]) -> None:
    rules = "targets:\n  local: {kind: local}\nrules:\n  - {action: answer_with, target: local}\n"
    unknown = write_policy(f"scorer: {{method: magic}}\n{rules}", "unknown.yaml")
    no_adapter = write_policy(f"scorer: {{method: head}}\n{rules}", "no-adapter.yaml")
    result = subprocess.run(
        [sys.executable, "-m", "router", "policy", "validate", str(unknown), str(no_adapter)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{unknown}:1: scorer.method: Value error, unknown scorer method 'magic' "
        "(known: consistency, head, intrinsic, nprob)",
        f"{no_adapter}:1: scorer.adapter: the head scorer needs an adapter folder",
    ]


def test_a_new_condition_scores_nothing_it_rules_out(
    write_policy: Callable[[str], Path], user_prefix: type[Condition]
) -> None:
    """Beside a confidence bound, the new condition is tested first: a request it rules out is not scored."""
    policy = load_policy(
        write_policy(
            """\
targets:
  local: {kind: local}
rules:
  - when: {user_prefix: team-, confidence_below: 0.6}
    action: refuse
  - action: answer_with
    target: local
"""
        )
    )
    assert [(d.action, scored) for d, scored in (decided(policy, "team-a"), decided(policy, "alice"))] == [
        ("refuse", 1),
        ("answer_with", 0),
    ]
    assert policy.rules[0].when.model_dump(exclude_none=True) == {
        "confidence_below": 0.6,
        "user_prefix": "team-",
    }
