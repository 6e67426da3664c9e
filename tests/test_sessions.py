"""Sessions: two replicas sharing a real Redis pin a conversation (by its header) to the target its first turn
went to, whichever replica takes each turn; an escalating rule moves the pin up, a refusal leaves it, and two
first turns at once agree on one target. The rules read request fields alone, so nothing is scored."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from policies import Decision, load_policy
from router.metrics import Metrics
from router.stages.sessions import Sessions
from router.state import MemoryStore
from tests.conftest import Served, emptied, head_scorer_yaml
from tests.faults import FaultServer

POLICY = """\
targets:
  local: {{kind: local, max_tokens: 2}}
  remote: {{kind: openai, model: ok, api_base: "{upstream}", num_retries: 0}}
sessions: {{key: header, header: x-conversation, ttl_s: 60, allow_escalation: {escalation}}}
rules:
  - {{name: up, when: {{user: up}}, action: escalate_to, target: remote}}
  - {{name: remote, when: {{user: remote}}, action: answer_with, target: remote}}
  - {{name: refused, when: {{user: refuse}}, action: refuse}}
  - {{name: local, action: answer_with, target: local}}
"""


@pytest.fixture(scope="module")
def faults() -> Iterator[FaultServer]:
    server = FaultServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def replicas(
    serve: Callable[..., Served],
    faults: FaultServer,
    tiny_model: Path,
    tiny_head: Path,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> list[Served]:
    path = tmp_path_factory.mktemp("sessions") / "policy.yaml"
    path.write_text(
        head_scorer_yaml(tiny_model, tiny_head) + POLICY.format(upstream=faults.base_url, escalation="true")
    )
    shared = emptied(redis_url)
    return [serve(load_policy(path), shared), serve(load_policy(path), shared)]


def turn(http: httpx.Client, replica: Served, user: str, session: str | None) -> httpx.Response:
    body = {"model": "router", "user": user, "messages": [{"role": "user", "content": "Hello"}]}
    headers = {} if session is None else {"x-conversation": session}
    response = http.post(f"{replica.base_url}/v1/chat/completions", json=body, headers=headers)
    assert response.status_code == 200, response.text
    return response


def turns_counted(http: httpx.Client, replicas: list[Served]) -> dict[str, float]:
    counted: dict[str, float] = {}
    for replica in replicas:
        for family in text_string_to_metric_families(http.get(f"{replica.base_url}/metrics").text):
            for sample in family.samples:
                if sample.name == "router_session_turns_total":
                    outcome = sample.labels["outcome"]
                    counted[outcome] = counted.get(outcome, 0.0) + sample.value
    return counted


def test_a_conversation_stays_on_its_first_target_across_replicas(
    replicas: list[Served], http: httpx.Client
) -> None:
    a, b = replicas
    before = turns_counted(http, replicas)
    seen = [
        turn(http, a, "local", "s1"),  # the first turn: the rule's target is pinned
        turn(http, b, "remote", "s1"),  # the rule says remote; the other replica knows the pin
        turn(http, b, "refuse", "s1"),  # a refusal refuses, and leaves the pin
        turn(http, a, "up", "s1"),  # an escalation moves the pin up
        turn(http, b, "local", "s1"),
        turn(http, a, "remote", None),  # no session: the rule alone
    ]
    assert [(r.headers["x-router-target"], r.headers.get("x-router-session")) for r in seen] == [
        ("local", "new"),
        ("local", "pinned"),
        ("none", None),
        ("remote", "new"),
        ("remote", "pinned"),
        ("remote", None),
    ]
    assert [r.headers["x-router-rule"] for r in seen[:2]] == ["local", "remote"]  # the rule is still named
    after = turns_counted(http, replicas)
    assert {k: after[k] - before.get(k, 0.0) for k in after} == {
        "new": 1,
        "pinned": 0,
        "overridden": 2,
        "escalated": 1,
    }


def test_two_first_turns_at_once_agree_on_one_target(replicas: list[Served], http: httpx.Client) -> None:
    for session in ("race-1", "race-2", "race-3"):
        with ThreadPoolExecutor(2) as pool:
            answered = list(
                pool.map(
                    lambda args: turn(http, *args),
                    [(replicas[0], "local", session), (replicas[1], "remote", session)],
                )
            )
        targets = {response.headers["x-router-target"] for response in answered}
        assert len(targets) == 1
        assert sorted(response.headers["x-router-session"] for response in answered) == ["new", "pinned"]


def test_without_allow_escalation_an_escalation_is_pinned_too(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.format(upstream="http://127.0.0.1:9/v1", escalation="false"))
    sessions = Sessions(load_policy(path), MemoryStore(), Metrics(), lambda target: True)

    def pin(target: str, action: str) -> tuple[str | None, str | None]:
        decision = Decision(action, target, action, None, None, 0)
        pinned, said = asyncio.run(sessions.pin(decision, "conversation", None, False))
        return pinned.target, said

    assert pin("local", "answer_with") == ("local", "new")
    assert pin("remote", "escalate_to") == ("local", "pinned")
    assert pin("remote", "answer_with") == ("local", "pinned")
