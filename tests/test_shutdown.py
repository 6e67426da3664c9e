"""SIGTERM on a real `router serve` process: stop accepting, drain within the grace period, write to Redis
what the process still keeps for it, exit 0."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from router.access.keys import ApiKey, KeyRegistry, counter_keys
from router.state import PROBE_ENV, redis_client
from router.state.resilient import FLUSH_TIMEOUT_S
from tests.conftest import free_port, head_scorer_yaml, wait_ready
from tests.provider import Provider
from tests.redis_process import RedisProcess, running_redis

PREFIX = "confidence-router:"

ROUTER = str(Path(sys.executable).with_name("router"))


@pytest.fixture
def held() -> Iterator[Provider]:
    provider = Provider(held=True)
    yield provider
    provider.close()


class Process:
    def __init__(
        self, policy: Path, grace_s: float, redis_url: str | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        command = [
            ROUTER,
            "serve",
            "--policy",
            str(policy),
            "--port",
            str(self.port),
            "--grace-s",
            str(grace_s),
            *(["--redis-url", redis_url] if redis_url else []),
        ]
        environment = {**os.environ, "SHUTDOWN_KEY": "sk-test", **(env or {})}
        self.proc = subprocess.Popen(command, env=environment, stderr=subprocess.PIPE, text=True)
        wait_ready(self.base_url)

    def stop(self, timeout_s: float = 60) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        _, stderr = self.proc.communicate(timeout=timeout_s)
        return self.proc.returncode, stderr

    def refuses_connections(self, within_s: float = 10) -> bool:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except ConnectionRefusedError:
                return True
            time.sleep(0.05)
        return False


@pytest.fixture
def policy(tmp_path: Path, tiny_model: Path, tiny_head: Path, held: Provider) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(f"""\
{head_scorer_yaml(tiny_model, tiny_head)}targets:
  local: {{kind: local, max_tokens: 1800}}
  remote: {{kind: litellm, model: openai/held, api_base: "{held.base_url}", api_key_env: SHUTDOWN_KEY}}
rules:
  - when: {{model: remote}}
    action: answer_with
    target: remote
  - action: answer_with
    target: local
""")
    return path


def in_flight(pool: ThreadPoolExecutor, base_url: str, model: str) -> Future[httpx.Response]:
    body = {"model": model, "messages": [{"role": "user", "content": "Tell me everything."}]}
    return pool.submit(httpx.post, f"{base_url}/v1/chat/completions", json=body, timeout=120)


def test_sigterm_drains_a_request_in_flight_then_exits_0(policy: Path, held: Provider) -> None:
    server = Process(policy, grace_s=30)
    with ThreadPoolExecutor(1) as pool:
        answer = in_flight(pool, server.base_url, "remote")
        assert held.arrived.wait(30)
        server.proc.send_signal(signal.SIGTERM)
        assert server.refuses_connections()  # no new work while the old finishes
        assert server.proc.poll() is None
        held.released.set()
        assert answer.result().status_code == 200
    returncode, stderr = server.stop()
    assert returncode == 0, stderr


def test_what_outlasts_the_grace_period_is_cancelled_and_the_exit_is_still_0(
    policy: Path, held: Provider
) -> None:
    server = Process(policy, grace_s=0.5)
    with ThreadPoolExecutor(2) as pool:
        upstream = in_flight(pool, server.base_url, "remote")
        assert held.arrived.wait(30)
        generating = in_flight(pool, server.base_url, "router")  # 1,800 tokens on the model's worker
        time.sleep(0.5)
        returncode, stderr = server.stop()
        assert returncode == 0, stderr
        for cut in (upstream, generating):
            assert cut.result().status_code == 503
            assert cut.result().json()["error"]["code"] == "shutting_down"
    assert "Cancel 2 running task(s)" in stderr
    assert "request=" not in stderr  # neither finished: the generation stopped where it was


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    with running_redis(tmp_path) as server:
        yield server


@pytest.fixture
def priced_policy(tmp_path: Path, tiny_model: Path, tiny_head: Path) -> Path:
    """Keys required; the local target costs $1 a token, so that every answer is spend to keep."""
    path = tmp_path / "priced.yaml"
    path.write_text(f"""\
auth: required
{head_scorer_yaml(tiny_model, tiny_head)}targets:
  local:
    kind: local
    max_tokens: 2
    cost: {{input_per_million: 1000000, output_per_million: 1000000}}
rules:
  - {{when: {{confidence_at_least: 0.0}}, action: answer_with, target: local}}
  - action: refuse
""")
    return path


def key_for(server: RedisProcess, name: str) -> str:
    async def create() -> str:
        client = redis_client(server.url, decode_responses=True)
        try:
            return await KeyRegistry(client).create(ApiKey(name, budget_usd=1_000_000.0))
        finally:
            await client.aclose()

    return asyncio.run(create())


def answered(base_url: str, key: str, question: str) -> tuple[str, int]:
    """The request id and the tokens (so the dollars) it was charged."""
    body = {"model": "router", "messages": [{"role": "user", "content": question}]}
    headers = {"Authorization": f"Bearer {key}", "x-router-feedback": "keep"}  # its decision is kept
    response = httpx.post(f"{base_url}/v1/chat/completions", json=body, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    return response.headers["x-router-request-id"], int(response.json()["usage"]["total_tokens"])


def spent_in_redis(server: RedisProcess, name: str, at_least: float) -> float:
    """The spend Redis holds for `name`, once it is `at_least` (debits are made off the response path)."""
    client = server.client()
    deadline = time.monotonic() + 10
    while (spent := float(client.get(PREFIX + counter_keys(name)[2]) or 0)) < at_least:
        assert time.monotonic() < deadline, f"spend {spent} never reached {at_least}"
        time.sleep(0.05)
    return spent


def store_mode(base_url: str) -> str:
    return str(httpx.get(f"{base_url}/readyz", timeout=5).json()["store"])


# The probe would replay on its own once Redis is back: an hour between probes leaves it to the shutdown.
NO_PROBE = {PROBE_ENV: "3600"}


def test_sigterm_writes_what_an_outage_kept_once_redis_is_back(
    priced_policy: Path, own_redis: RedisProcess
) -> None:
    key = key_for(own_redis, "tenant")
    server = Process(priced_policy, grace_s=5, redis_url=own_redis.url, env=NO_PROBE)
    before = answered(server.base_url, key, "Before the outage?")
    spent_in_redis(own_redis, "tenant", before[1])
    own_redis.kill()
    during = [answered(server.base_url, key, f"During the outage, question {i}?") for i in range(3)]
    assert store_mode(server.base_url) == "degraded"
    own_redis.start()  # the same port; its AOF brings back what it had
    time.sleep(1)
    assert store_mode(server.base_url) == "degraded"  # nothing replayed yet

    returncode, stderr = server.stop()
    assert returncode == 0, stderr
    # Per request: its decision, its traffic entry, its cached score, its spend.
    assert "state store: 12 buffered writes written to Redis before closing" in stderr, stderr
    held = own_redis.client()
    for request_id, _ in [before, *during]:
        assert held.exists(f"{PREFIX}decision:{request_id}")
    traffic = [k for k in held.scan_iter(f"{PREFIX}window:traffic:*")]
    assert len(traffic) == 1 and held.llen(traffic[0]) == 4
    assert float(held.get(PREFIX + counter_keys("tenant")[2]) or 0) == before[1] + sum(t for _, t in during)


def test_sigterm_with_redis_still_away_exits_0_within_the_bound_and_says_what_is_lost(
    priced_policy: Path, own_redis: RedisProcess
) -> None:
    key = key_for(own_redis, "tenant")
    server = Process(priced_policy, grace_s=5, redis_url=own_redis.url, env=NO_PROBE)
    _, tokens = answered(server.base_url, key, "Before the outage?")
    spent_in_redis(own_redis, "tenant", tokens)
    own_redis.kill()
    answered(server.base_url, key, "During the outage?")
    started = time.monotonic()
    returncode, stderr = server.stop()
    assert returncode == 0, stderr
    assert time.monotonic() - started < FLUSH_TIMEOUT_S + 5
    assert "state store: closing with 4 buffered writes that Redis did not take" in stderr, stderr
