"""Fallbacks and cooldowns over real HTTP against tests/faults.py: a target that fails in a way another
target can help with hands the request to its next fallback (on every route, streams included until their
first chunk); one that keeps failing is not called at all for a while, by any replica.

Targets (their upstream model is named after them unless said): `primary` and the local `local-first`
fall back to `backup`, `to-local` to the local model; `failing` (always HTTP 500), `brief` and `shared`
cool down. Each test uses targets no
other test cools down, so the module's one router serves them all.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from policies import Policy
from router.cooldown import REFRESH_S, cooldown_key
from router.schemas import ChatCompletionRequest
from router.state import MemoryStore
from tests.conftest import Served, head_scorer_yaml, policy_from
from tests.faults import ANSWER, FaultServer
from tests.test_policies import expect_problems

TIMEOUT_S = 1.0
RETRIES = 1
FAILURES = 3
"""`failing`'s cooldown: this many failed requests within its window."""
BRIEF_COOLDOWN_S = 1.0
QUESTION = [{"role": "user", "content": "Say something."}]


def _policy(scorer: str, faults: FaultServer) -> str:
    remote = f'kind: litellm, api_base: "{faults.base_url}", api_key_env: FAULTS_KEY, timeout_s: {TIMEOUT_S}'
    off = "cooldown: {failures: 0}"
    return (
        scorer
        + f"""\
targets:
  local: {{kind: local, max_tokens: 4}}
  local-first: {{kind: local, max_tokens: 4, fallbacks: [backup]}}
  primary: {{{remote}, model: openai/primary, num_retries: {RETRIES}, fallbacks: [backup], {off}}}
  backup: {{{remote}, model: openai/backup, num_retries: 0, {off}}}
  to-local: {{{remote}, model: openai/to-local, num_retries: {RETRIES}, fallbacks: [local], {off}}}
  failing:
    {{{remote}, model: openai/status-500, num_retries: {RETRIES}, fallbacks: [backup],
     cooldown: {{failures: {FAILURES}, window_s: 30, cooldown_s: 30}}}}
  brief:
    {{{remote}, model: openai/brief, num_retries: 0,
     cooldown: {{failures: 2, window_s: 30, cooldown_s: {BRIEF_COOLDOWN_S}}}}}
  shared:
    {{{remote}, model: openai/shared, num_retries: 0, fallbacks: [backup],
     cooldown: {{failures: 2, window_s: 30, cooldown_s: 30}}}}
rules:
  - when: {{model: router, user: escalate, confidence_at_least: 0.0}}
    action: escalate_to
    target: primary
  - when: {{model: router, user: hedge, confidence_at_least: 0.0}}
    action: hedge
    target: primary
    message: "Maybe: {{answer}}"
"""
        + "".join(
            f"  - {{when: {{model: {name}}}, action: answer_with, target: {name}}}\n"
            for name in ("primary", "backup", "to-local", "local-first", "failing", "brief", "shared")
        )
        + "  - {action: answer_with, target: local}\n"
    )


@pytest.fixture(scope="module")
def faults() -> Iterator[FaultServer]:
    server = FaultServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def policy(
    faults: FaultServer, tiny_model: Path, tiny_head: Path, tmp_path_factory: pytest.TempPathFactory
) -> Policy:
    return policy_from(
        _policy(head_scorer_yaml(tiny_model, tiny_head), faults), tmp_path_factory.mktemp("fb")
    )


@pytest.fixture(scope="module")
def router(serve: Callable[[Policy], Served], policy: Policy) -> Iterator[Served]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FAULTS_KEY", "sk-faults")
        yield serve(policy)


@pytest.fixture
def stub(faults: FaultServer) -> FaultServer:
    faults.reset()
    return faults


def post(router: Served, model: str, **fields: Any) -> httpx.Response:
    body = {"model": model, "messages": QUESTION, **fields}
    return httpx.post(f"{router.base_url}/v1/chat/completions", json=body, timeout=30)


def request(model: str) -> ChatCompletionRequest:
    """A request for a Router called directly (no HTTP)."""
    return ChatCompletionRequest.model_validate({"model": model, "messages": QUESTION})


def metric(router: Served, name: str, **labels: str) -> float:
    text = httpx.get(f"{router.base_url}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def fallbacks(router: Served, from_target: str, to_target: str, reason: str) -> float:
    labels = {"from_target": from_target, "to_target": to_target, "reason": reason}
    return metric(router, "router_fallbacks_total", **labels)


def content(response: httpx.Response) -> str:
    return str(response.json()["choices"][0]["message"]["content"])


def streamed_text(response: httpx.Response) -> tuple[str, list[Any]]:
    events = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]
    parsed = [json.loads(e) for e in events if e != "[DONE]"]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in parsed if c.get("choices"))
    return text, parsed


# Fallbacks


@pytest.mark.parametrize(
    ("behaviour", "reason", "calls"),
    [
        ("status-500", "server", 1 + RETRIES),
        ("status-503", "server", 1 + RETRIES),
        ("reset", "connection", 1 + RETRIES),
        ("status-429", "rate_limit", 1 + RETRIES),
        ("hang-5", "timeout", 1),  # the hang takes the whole deadline: there is none left to retry in
    ],
)
def test_a_failing_remote_falls_back_to_the_next_remote(
    router: Served, stub: FaultServer, behaviour: str, reason: str, calls: int
) -> None:
    stub.script("primary", *[behaviour] * calls)
    counted = fallbacks(router, "primary", "backup", reason)
    failed = metric(router, "router_upstream_errors_total", target="primary", kind=reason)
    response = post(router, "primary")
    assert response.status_code == 200, response.text
    assert content(response) == ANSWER
    assert response.headers["x-router-target"] == "backup"
    assert response.headers["x-router-fallback"] == f"primary:{reason}"
    assert (stub.calls("primary"), stub.calls("backup")) == (calls, 1)  # its own retries, then the next
    assert fallbacks(router, "primary", "backup", reason) == counted + 1
    assert metric(router, "router_upstream_errors_total", target="primary", kind=reason) == failed + 1
    assert metric(router, "router_requests_total", decision="answer", target="backup") >= 1


def test_a_failing_remote_falls_back_to_the_local_model(router: Served, stub: FaultServer) -> None:
    stub.script("to-local", *["status-502"] * (1 + RETRIES))
    response = post(router, "to-local")
    assert response.status_code == 200, response.text
    assert response.headers["x-router-target"] == "local"
    assert response.headers["x-router-fallback"] == "to-local:server"
    assert response.json()["model"] == "local"  # written by the local model, not the stub
    assert response.json()["usage"]["completion_tokens"] >= 1
    assert stub.calls("to-local") == 1 + RETRIES


def test_a_healthy_target_answers_without_a_fallback_header(router: Served, stub: FaultServer) -> None:
    response = post(router, "primary")
    assert response.status_code == 200
    assert response.headers["x-router-target"] == "primary"
    assert "x-router-fallback" not in response.headers
    assert stub.calls("backup") == 0


@pytest.mark.parametrize(
    ("behaviour", "status", "code"),
    [
        ("status-400", 400, "upstream_bad_request"),
        ("status-401", 502, "upstream_auth_failed"),
        ("status-404", 502, "upstream_not_found"),
        ("not-json", 502, "upstream_malformed"),
    ],
)
def test_errors_another_target_would_not_mend_do_not_fall_back(
    router: Served, stub: FaultServer, behaviour: str, status: int, code: str
) -> None:
    stub.script("primary", behaviour)
    response = post(router, "primary")
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert "x-router-fallback" not in response.headers
    assert (stub.calls("primary"), stub.calls("backup")) == (1, 0)


def test_when_every_choice_fails_the_client_gets_the_first_failure(router: Served, stub: FaultServer) -> None:
    stub.script("primary", *["status-500"] * (1 + RETRIES))
    stub.script("backup", "reset")
    before = metric(router, "router_upstream_errors_total", target="backup", kind="connection")
    response = post(router, "primary")
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "upstream_server_error"
    assert "'primary'" in error["message"]
    assert metric(router, "router_upstream_errors_total", target="backup", kind="connection") == before + 1


def test_the_escalate_route_falls_back(router: Served, stub: FaultServer) -> None:
    stub.script("primary", *["status-500"] * (1 + RETRIES))
    response = post(router, "router", user="escalate")
    assert response.status_code == 200, response.text
    assert response.headers["x-router-decision"] == "escalate"
    assert response.headers["x-router-target"] == "backup"
    assert response.headers["x-router-fallback"] == "primary:server"
    assert content(response) == ANSWER
    assert metric(router, "router_requests_total", decision="escalate", target="backup") >= 1


def test_the_hedge_route_falls_back(router: Served, stub: FaultServer) -> None:
    stub.script("primary", *["reset"] * (1 + RETRIES))
    response = post(router, "router", user="hedge")
    assert response.status_code == 200, response.text
    assert response.headers["x-router-decision"] == "hedge"
    assert response.headers["x-router-target"] == "backup"
    assert response.headers["x-router-fallback"] == "primary:connection"
    assert content(response) == f"Maybe: {ANSWER}"


def test_a_stream_that_fails_before_its_first_chunk_falls_back(router: Served, stub: FaultServer) -> None:
    stub.script("primary", *["status-503"] * (1 + RETRIES))
    response = post(router, "primary", stream=True)
    assert response.status_code == 200, response.text
    assert response.headers["x-router-target"] == "backup"
    assert response.headers["x-router-fallback"] == "primary:server"
    text, events = streamed_text(response)
    assert text.strip() == ANSWER
    assert not any("error" in event for event in events)


def test_a_stream_cut_after_its_first_chunk_does_not_fall_back(router: Served, stub: FaultServer) -> None:
    """The client has part of the primary's answer (and its headers) already: another target's answer
    cannot follow it."""
    stub.script("primary", "stream-cut")
    response = post(router, "primary", stream=True)
    assert response.headers["x-router-target"] == "primary"
    _, events = streamed_text(response)
    assert events[-1]["error"]["code"] == "stream_cut"
    assert stub.calls("backup") == 0


def test_a_local_model_that_cannot_answer_falls_back(
    faults: FaultServer, policy: Policy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local answer stopped by the model shutting down (a 503, as when it is overloaded)."""
    from localmodel.model import LocalModel
    from router.service import Router

    monkeypatch.setenv("FAULTS_KEY", "sk-faults")
    faults.reset()

    async def run() -> None:
        model = LocalModel(str(policy.scorer.model))
        router = Router(policy, model)
        model.closing.set()
        try:
            routed = await router.route(request("local-first"))
        finally:
            await router.close()
        assert (routed.decision.target, routed.fallback) == ("backup", "local-first:overloaded")
        assert routed.body is not None and routed.body["choices"][0]["message"]["content"] == ANSWER

    asyncio.run(run())


# Cooldowns


def test_a_target_that_keeps_failing_is_no_longer_called(router: Served, stub: FaultServer) -> None:
    """Without a cooldown, 30 requests would make 30 * (1 + RETRIES) calls to the failing upstream."""
    assert metric(router, "router_target_up", target="failing") == 1
    responses = [post(router, "failing") for _ in range(30)]
    assert [r.status_code for r in responses] == [200] * 30
    assert {r.headers["x-router-target"] for r in responses} == {"backup"}
    assert [r.headers["x-router-fallback"] for r in responses] == ["failing:server"] * FAILURES + [
        "failing:cooling_down"
    ] * (30 - FAILURES)
    assert stub.calls("status-500") == FAILURES * (1 + RETRIES)
    assert stub.calls("backup") == 30
    assert fallbacks(router, "failing", "backup", "cooling_down") == 30 - FAILURES
    assert metric(router, "router_target_up", target="failing") == 0


def test_a_cooldown_without_fallbacks_is_a_fast_503_and_ends_after_cooldown_s(
    router: Served, stub: FaultServer
) -> None:
    stub.script("brief", "status-500", "status-500")
    assert [post(router, "brief").status_code for _ in range(2)] == [502, 502]
    started = time.monotonic()
    refused = post(router, "brief")
    assert time.monotonic() - started < 0.5
    assert refused.status_code == 503
    error = refused.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "target_cooling_down"
    assert refused.headers["retry-after"] == str(int(BRIEF_COOLDOWN_S))
    assert stub.calls("brief") == 2  # not called while it cools down
    assert metric(router, "router_target_up", target="brief") == 0

    time.sleep(BRIEF_COOLDOWN_S + 0.1)
    recovered = post(router, "brief")
    assert recovered.status_code == 200, recovered.text
    assert recovered.headers["x-router-target"] == "brief"
    assert stub.calls("brief") == 3
    assert metric(router, "router_target_up", target="brief") == 1


def test_a_cooldown_reaches_another_replica_within_a_second(
    faults: FaultServer, policy: Policy, tiny_model: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two routers (replicas) on one real Redis: b has just found `shared` healthy when a cools it down;
    b stops calling it within REFRESH_S (plus a request's time)."""
    from localmodel.model import LocalModel
    from router.service import Router
    from router.state import RedisStore, ResilientStore

    monkeypatch.setenv("FAULTS_KEY", "sk-faults")
    faults.reset()
    prefix = f"test-cooldown-{uuid.uuid4().hex}:"  # this test's keys only, whatever else db 15 holds

    async def run() -> None:
        model = LocalModel(str(policy.scorer.model))
        stores = [ResilientStore(RedisStore(redis_url, prefix=prefix)) for _ in range(2)]
        a, b = Router(policy, model, stores[0]), Router(policy, model, stores[1])
        try:
            assert (await b.route(request("shared"))).decision.target == "shared"
            faults.script("shared", "status-500", "status-500")
            for _ in range(2):
                assert (await a.route(request("shared"))).fallback == "shared:server"
            tripped = time.monotonic()
            assert (await a.route(request("shared"))).fallback == "shared:cooling_down"  # at once
            while (await b.route(request("shared"))).fallback != "shared:cooling_down":
                assert time.monotonic() - tripped < REFRESH_S + 0.5, "b still calls a target cooling down"
                await asyncio.sleep(0.02)
            assert await stores[1].get(cooldown_key("shared")) is not None
        finally:
            for router in (a, b):
                await router.close()
            for store in stores:
                await store.close()

    asyncio.run(run())


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    async def get(self, key: str) -> str | None:
        self.reads.append(key)
        return await super().get(key)


def test_a_healthy_target_costs_no_store_read_per_request(
    faults: FaultServer, policy: Policy, monkeypatch: pytest.MonkeyPatch
) -> None:
    from localmodel.model import LocalModel
    from router.service import Router

    monkeypatch.setenv("FAULTS_KEY", "sk-faults")
    faults.reset()
    store = CountingStore()

    async def run() -> float:
        router = Router(policy, LocalModel(str(policy.scorer.model)), store)
        started = time.monotonic()
        try:
            for _ in range(20):
                assert (await router.route(request("shared"))).decision.target == "shared"
            return time.monotonic() - started
        finally:
            await router.close()

    elapsed = asyncio.run(run())
    reads = store.reads.count(cooldown_key("shared"))
    assert 1 <= reads <= 1 + elapsed / REFRESH_S
    assert reads < 20


# Policy validation


def test_fallbacks_must_name_other_existing_targets_once(write_policy: Callable[[str], Path]) -> None:
    problems = expect_problems(
        write_policy,
        """\
targets:
  local: {kind: local, fallbacks: [local]}
  big:
    kind: litellm
    model: openai/x
    fallbacks: [local, huge, local]
rules:
  - action: answer_with
    target: big
""",
    )
    assert problems == [
        "2: targets.local.fallbacks.0: a target cannot be its own fallback",
        "6: targets.big.fallbacks.1: unknown target 'huge' (targets: local, big)",
        "6: targets.big.fallbacks.2: 'local' is listed twice",
    ]


def test_a_cooldown_takes_sensible_values(write_policy: Callable[[str], Path]) -> None:
    problems = expect_problems(
        write_policy,
        """\
targets:
  big: {kind: litellm, model: openai/x, cooldown: {failures: -1, window_s: 0}}
rules:
  - {action: answer_with, target: big}
""",
    )
    assert problems == [
        "2: targets.big.cooldown.failures: Input should be greater than or equal to 0",
        "2: targets.big.cooldown.window_s: Input should be greater than 0",
    ]
