"""Budget-targeted thresholds: `target_escalation_rate` in the policy, and two replicas that follow the
rolling quantile of confidences they share through Redis (one server, a Cluster, a master behind a
Sentinel)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from policies import Confidences, PolicyError, RequestFacts, decide, load_policy
from router.budget import MIN_SAMPLES
from tests.conftest import Served, head_scorer_yaml

BUDGETED = """\
target_escalation_rate: 0.3
targets:
  local: {kind: local, max_tokens: 1}
rules:
  - name: over-budget
    when: {confidence_below: 0.0}   # never, until the rolling quantile takes over
    action: escalate_to
    target: local
  - action: refuse
"""


def test_the_engine_applies_a_threshold_override(write_policy: Callable[[str], Path]) -> None:
    policy = load_policy(write_policy(BUDGETED))
    assert policy.budgeted_rule == 0

    async def confidence() -> Confidences:
        return Confidences(0.4)

    facts = RequestFacts("router")
    assert asyncio.run(decide(policy, facts, confidence)).outcome == "refuse"
    assert asyncio.run(decide(policy, facts, confidence, {0: 0.5})).outcome == "escalate"


@pytest.mark.parametrize(
    ("rules", "problem"),
    [
        (
            "  - {when: {confidence_below: 0.5}, action: hedge}\n  - action: refuse\n",
            "6: target_escalation_rate: needs exactly one escalate_to rule with confidence_below",
        ),
        (
            "  - {when: {confidence_below: 0.8}, action: hedge}\n"
            "  - {when: {confidence_below: 0.5}, action: escalate_to, target: local}\n  - action: refuse\n",
            "4: rules.0.when: with target_escalation_rate the escalate_to rule (rules[1]) must be the first",
        ),
    ],
)
def test_budget_policies_are_checked(write_policy: Callable[[str], Path], rules: str, problem: str) -> None:
    path = write_policy(
        "targets:\n  local: {kind: local}\nrules:\n" + rules + "target_escalation_rate: 0.3\n"
    )
    with pytest.raises(PolicyError) as raised:
        load_policy(path)
    [line] = raised.value.problems
    assert line.startswith(f"{path}:{problem}")


def test_replicas_follow_the_shared_rolling_quantile(
    serve: Callable[..., Served],
    tiny_model: Path,
    tiny_head: Path,
    fresh_backend: str,
    tmp_path: Path,
    http: httpx.Client,
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(head_scorer_yaml(tiny_model, tiny_head) + BUDGETED)
    a, b = serve(load_policy(path), fresh_backend), serve(load_policy(path), fresh_backend)

    # One stream of questions dealt out at random, so that both replicas see the same distribution.
    questions = [f"Question {i}: how far is it?" for i in range(MIN_SAMPLES + 100)]
    random.Random(0).shuffle(questions)

    def decisions(replica: Served, start: int, count: int) -> list[str]:
        out = []
        for question in questions[start : start + count]:
            body = {"model": "router", "messages": [{"role": "user", "content": question}]}
            out.append(
                http.post(f"{replica.base_url}/v1/chat/completions", json=body).headers["x-router-decision"]
            )
        return out

    # Until the shared window holds MIN_SAMPLES scores, the written threshold (0.0: never) holds.
    warm_up = decisions(a, 0, MIN_SAMPLES)
    assert warm_up.count("escalate") == 0
    # b has seen nothing itself, yet from its first request it follows the quantile of a's traffic.
    followed = decisions(b, MIN_SAMPLES, 100)
    assert 0.2 <= followed.count("escalate") / len(followed) <= 0.4

    ratios = [
        float(
            next(line for line in text.splitlines() if line.startswith("router_escalation_ratio ")).split()[1]
        )
        for text in (http.get(f"{r.base_url}/metrics").text for r in (a, b))
    ]
    assert ratios[0] == ratios[1] == pytest.approx(followed.count("escalate") / (MIN_SAMPLES + 100))
