"""API keys, per-key limits and budgets: real Redis (one server, a Cluster, a master behind a Sentinel), real
HTTP, the tiny model answering."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from policies import Policy, PolicyError, load_policy
from router.access.gate import MAX_TENANT_LABELS, Caller, Gate
from router.access.keys import ApiKey, KeyProblem, KeyRegistry
from router.access.limits import Limits, duration
from router.state import RedisStore, ResilientStore, redis_client
from tests.conftest import Served, emptied, free_port, head_scorer_yaml, wait_ready
from tests.faults import USAGE as FAULT_USAGE
from tests.faults import FaultServer
from tests.redis_process import KINDS, Backend, direct_client, running_redis

ADMIN = "admin-secret"


def access_policy(scorer_yaml: str, extra: str = "") -> str:
    return f"""\
name: access
auth: required
{scorer_yaml}
targets:
  local:
    kind: local
    max_tokens: 4
    cost: {{input_per_million: 1000000, output_per_million: 1000000}}
rules:
  - name: vip-refused
    when: {{tenant: vip}}
    action: refuse
    message: "Not for you."
  - name: scored
    when: {{confidence_at_least: 0.0}}
    action: answer_with
    target: local
  - action: answer_with
    target: local
{extra}"""


@pytest.fixture(scope="module")
def policy(tiny_model: Path, tiny_head: Path, tmp_path_factory: pytest.TempPathFactory) -> Policy:
    path = tmp_path_factory.mktemp("access") / "access.yaml"
    path.write_text(access_policy(head_scorer_yaml(tiny_model, tiny_head)))
    return load_policy(path)


@pytest.fixture(scope="module")
def proxy(serve: Callable[..., Served], policy: Policy, backend_url: str) -> Served:
    emptied(backend_url)
    return serve(policy, backend_url, admin_key=ADMIN)


def create(backend_url: str, spec: ApiKey) -> str:
    async def run() -> str:
        client = redis_client(backend_url, decode_responses=True)
        try:
            registry = KeyRegistry(client)
            with contextlib.suppress(KeyProblem):
                await registry.revoke(spec.name)
            return await registry.create(spec)
        finally:
            await client.aclose()

    key = asyncio.run(run())
    time.sleep(0.7)  # every replica rereads the key table within 0.5 s
    return key


def chat(
    http: httpx.Client,
    proxy: Served,
    key: str | None,
    question: str = "Hi?",
    *,
    keep: bool = False,
    **body: object,
) -> httpx.Response:
    """`keep`: ask for the decision to be kept, so that feedback can join it."""
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    if keep:
        headers["x-router-feedback"] = "keep"
    payload = {"model": "router", "messages": [{"role": "user", "content": question}], **body}
    return http.post(f"{proxy.base_url}/v1/chat/completions", json=payload, headers=headers)


def error(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return dict(body["error"])


def test_a_missing_or_unknown_key_is_a_401_on_every_endpoint(proxy: Served, http: httpx.Client) -> None:
    for authorization in (None, "Bearer cr-not-a-key", "Basic dXNlcjpwYXNz", "Bearer"):
        headers = {} if authorization is None else {"Authorization": authorization}
        for method, path, body in (
            (
                "POST",
                "/v1/chat/completions",
                {"model": "router", "messages": [{"role": "user", "content": "x"}]},
            ),
            ("POST", "/v1/score", {"messages": [{"role": "user", "content": "x"}]}),
            ("POST", "/v1/feedback", {"request_id": "x", "correct": True}),
            ("GET", "/v1/models", None),
            ("GET", "/metrics", None),
            ("GET", "/openapi.json", None),
            ("GET", "/docs", None),
        ):
            response = http.request(method, f"{proxy.base_url}{path}", json=body, headers=headers)
            assert response.status_code == 401, (path, authorization, response.text)
            assert error(response)["code"] == "invalid_api_key"
            assert response.headers["www-authenticate"] == "Bearer"
    assert http.get(f"{proxy.base_url}/healthz").status_code == 200
    assert http.get(f"{proxy.base_url}/readyz").status_code == 200


def test_the_api_document_and_its_page_take_a_key_or_the_admin_key(
    proxy: Served, http: httpx.Client, backend_url: str
) -> None:
    key = create(backend_url, ApiKey("reads-the-docs"))
    for caller in (key, ADMIN):
        headers = {"Authorization": f"Bearer {caller}"}
        document = http.get(f"{proxy.base_url}/openapi.json", headers=headers)
        assert document.status_code == 200, document.text
        assert "/v1/chat/completions" in document.json()["paths"]
        page = http.get(f"{proxy.base_url}/docs", headers=headers)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert '"/v1/chat/completions"' in page.text  # the document is in the page, fetched with the key
    assert http.get(f"{proxy.base_url}/redoc").status_code == 404  # no page that would fetch it without one


def test_a_key_answers_and_its_tenant_is_a_fact_rules_match(
    proxy: Served, http: httpx.Client, backend_url: str
) -> None:
    key, vip = create(backend_url, ApiKey("team-a")), create(backend_url, ApiKey("vip"))
    answered = chat(http, proxy, key)
    assert answered.status_code == 200, answered.text
    assert answered.headers["x-router-rule"] == "scored"
    assert not any(h.startswith("x-ratelimit") for h in answered.headers)  # no limits, no limit headers
    refused = chat(http, proxy, vip)
    assert refused.status_code == 200 and refused.headers["x-router-rule"] == "vip-refused"
    assert refused.json()["choices"][0]["message"]["content"] == "Not for you."
    assert chat(http, proxy, ADMIN).headers["x-router-rule"] == "scored"  # the admin key is a caller too


def test_a_key_may_use_only_its_models(proxy: Served, http: httpx.Client, backend_url: str) -> None:
    key = create(backend_url, ApiKey("local-only", models=("local",)))
    assert chat(http, proxy, key, model="local").status_code == 200
    forbidden = chat(http, proxy, key, model="router")
    assert forbidden.status_code == 403
    assert error(forbidden)["code"] == "model_not_allowed" and error(forbidden)["param"] == "model"


def test_requests_per_minute_are_limited_with_openai_headers(
    proxy: Served, http: httpx.Client, backend_url: str
) -> None:
    key = create(backend_url, ApiKey("rpm-3", rpm=3))
    remaining = []
    for _ in range(3):
        response = chat(http, proxy, key)
        assert response.status_code == 200, response.text
        assert response.headers["x-ratelimit-limit-requests"] == "3"
        remaining.append(int(response.headers["x-ratelimit-remaining-requests"]))
    assert remaining == [2, 1, 0]
    limited = chat(http, proxy, key)
    assert limited.status_code == 429
    assert error(limited)["code"] == "rate_limit_exceeded" and error(limited)["type"] == "requests"
    assert 1 <= int(limited.headers["retry-after"]) <= 20  # one request refills in 20 s
    assert limited.headers["x-ratelimit-remaining-requests"] == "0"
    assert limited.headers["x-ratelimit-reset-requests"].endswith("s")


def test_tokens_per_minute_count_the_answers_tokens(
    proxy: Served, http: httpx.Client, backend_url: str
) -> None:
    key = create(backend_url, ApiKey("tpm-10", tpm=10))
    first = chat(http, proxy, key, "Name every ocean on the planet, please.")
    assert first.status_code == 200 and first.headers["x-ratelimit-limit-tokens"] == "10"
    assert first.json()["usage"]["total_tokens"] > 10  # one answer empties the minute's tokens
    deadline = time.monotonic() + 5  # the debit is made off the response path
    while (limited := chat(http, proxy, key)).status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert limited.status_code == 429
    assert error(limited)["type"] == "tokens" and "retry-after" in limited.headers


def test_a_spent_budget_is_a_429_budget_exceeded(proxy: Served, http: httpx.Client, backend_url: str) -> None:
    key = create(backend_url, ApiKey("budget-5", budget_usd=5.0))  # the local target costs $1 a token
    assert chat(http, proxy, key).status_code == 200
    deadline = time.monotonic() + 5
    while (refused := chat(http, proxy, key)).status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert refused.status_code == 429
    assert error(refused)["code"] == "budget_exceeded"
    spent = float(direct_client(backend_url).get("confidence-router:limit:{budget-5}:spent") or 0)
    assert spent > 5.0


def test_feedback_is_taken_only_from_the_key_that_asked(
    proxy: Served, http: httpx.Client, backend_url: str
) -> None:
    owner, other = create(backend_url, ApiKey("owner")), create(backend_url, ApiKey("other"))
    request_id = chat(http, proxy, owner, keep=True).headers["x-router-request-id"]
    url = f"{proxy.base_url}/v1/feedback"
    body = {"request_id": request_id, "correct": True}
    stranger = http.post(url, json=body, headers={"Authorization": f"Bearer {other}"})
    assert stranger.status_code == 404 and error(stranger)["code"] == "request_not_found"
    assert (
        http.post(url, json=body, headers={"Authorization": f"Bearer {owner}"}).json()["status"] == "recorded"
    )
    second_id = chat(http, proxy, owner, keep=True).headers["x-router-request-id"]
    by_admin = http.post(
        url, json={**body, "request_id": second_id}, headers={"Authorization": f"Bearer {ADMIN}"}
    )
    assert by_admin.json()["status"] == "recorded"


def test_each_tenant_has_its_own_score_cache_and_metrics_take_the_admin_key(
    proxy: Served, http: httpx.Client, backend_url: str
) -> None:
    one, two = create(backend_url, ApiKey("cache-one")), create(backend_url, ApiKey("cache-two"))

    def hits() -> float:
        text = http.get(f"{proxy.base_url}/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).text
        line = next(x for x in text.splitlines() if x.startswith('router_scoring_seconds_count{cache="hit"}'))
        return float(line.split()[-1])

    question = f"Which tenant asked this first? {time.time()}"
    before = hits()
    chat(http, proxy, one, question)
    chat(http, proxy, two, question)  # the same conversation from another tenant: scored afresh
    assert hits() == before
    chat(http, proxy, one, question)
    assert hits() == before + 1
    tenant_metrics = http.get(f"{proxy.base_url}/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).text
    assert 'router_tenant_requests_total{result="admitted",tenant="cache-one"}' in tenant_metrics
    assert question not in tenant_metrics
    as_tenant = http.get(f"{proxy.base_url}/metrics", headers={"Authorization": f"Bearer {one}"})
    assert as_tenant.status_code == 403 and error(as_tenant)["code"] == "admin_only"


def test_the_cli_creates_lists_and_revokes_and_revocation_reaches_the_server_within_a_second(
    proxy: Served, http: httpx.Client, backend_url: str
) -> None:
    def keys(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "router", "keys", *args, "--redis-url", backend_url]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    keys("revoke", "cli-made")
    made = keys("create", "--name", "cli-made", "--rpm", "100", "--models", "router,local")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("cr-") and len(key) > 40
    stored = direct_client(backend_url).hgetall("confidence-router:{keys}")
    assert key not in str(stored)  # only its hash is kept
    listed = keys("list")
    assert "cli-made" in listed.stdout and key not in listed.stdout
    assert "router,local" in listed.stdout
    assert keys("create", "--name", "cli-made").returncode == 2  # the name is taken

    time.sleep(0.7)
    assert chat(http, proxy, key).status_code == 200
    assert keys("revoke", "cli-made").returncode == 0
    revoked_at = time.monotonic()
    while chat(http, proxy, key).status_code == 200:
        assert time.monotonic() - revoked_at < 1.0, "revocation took more than a second to reach the server"
        time.sleep(0.05)
    assert chat(http, proxy, key).status_code == 401
    assert keys("revoke", "cli-made").returncode == 2
    bad = keys("create", "--name", "no spaces allowed")
    assert bad.returncode == 2 and "key name" in bad.stderr


def test_keys_need_a_reachable_redis(free_redis_port: int) -> None:
    command = [
        sys.executable,
        "-m",
        "router",
        "keys",
        "list",
        "--redis-url",
        f"redis://127.0.0.1:{free_redis_port}",
    ]
    failed = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert failed.returncode == 1
    assert failed.stderr.count("\n") == 1 and "unreachable" in failed.stderr


@pytest.fixture
def free_redis_port() -> int:
    return free_port()


def test_auth_required_without_redis_fails_the_start_in_one_line(tmp_path: Path, policy: Policy) -> None:
    path = tmp_path / "auth.yaml"
    path.write_text(policy.model_dump_json())  # JSON is YAML
    command = [sys.executable, "-m", "router", "serve", "--policy", str(path), "--port", "1"]
    env = {k: v for k, v in os.environ.items() if k != "ROUTER_REDIS_URL"}
    failed = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert failed.returncode == 2
    assert (
        failed.stderr.strip().splitlines()[-1]
        == "error: auth: required needs Redis (--redis-url): the keys live there"
    )


def test_duration_is_spelt_as_openai_does() -> None:
    assert [duration(s) for s in (0.02, 1.5, 60, 360.2, -1)] == ["20ms", "1.5s", "1m0s", "6m0.2s", "0ms"]


@pytest.fixture(params=KINDS)
def own_redis(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Backend]:
    with running_redis(tmp_path, request.param) as server:
        yield server


def test_limits_hold_across_replicas_and_fall_back_to_each_replica_when_redis_is_away(
    own_redis: Backend,
) -> None:
    async def run() -> None:
        stores = [ResilientStore(RedisStore(own_redis.url)) for _ in range(2)]
        replicas = [Limits(store, store.client) for store in stores]
        key = ApiKey("shared", rpm=5)
        admitted = [(await replicas[i % 2].admit(key)).refused is None for i in range(12)]
        assert admitted == [True] * 5 + [False] * 7
        own_redis.kill()
        # Redis away: each replica admits from its own bucket, up to the whole limit each.
        for replica, store in zip(replicas, stores, strict=True):
            local = [(await replica.admit(ApiKey("shared-2", rpm=3))).refused for _ in range(4)]
            assert local == [None, None, None, "rpm"]
            assert not store.health().up
        for store in stores:
            await store.close()

    asyncio.run(run())


@pytest.fixture(scope="module")
def two_replicas(
    policy: Policy, backend_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[str]]:
    """Two `router serve` processes on one Redis."""
    folder = tmp_path_factory.mktemp("replicas")
    path = folder / "policy.yaml"
    path.write_text(policy.model_dump_json())
    env = {**os.environ, "ROUTER_THREADS": "1", "ROUTER_ADMIN_KEY": ADMIN}
    started: list[tuple[str, subprocess.Popen[bytes]]] = []
    try:
        for name in ("a", "b"):
            port = free_port()
            command = [sys.executable, "-m", "router", "serve", "--policy", str(path), "--port", str(port)]
            with (folder / f"{name}.log").open("wb") as log:
                process = subprocess.Popen(
                    [*command, "--redis-url", backend_url], stdout=log, stderr=log, env=env
                )
            started.append((f"http://127.0.0.1:{port}", process))
        for url, _ in started:
            wait_ready(url)
        yield [url for url, _ in started]
    finally:
        for _, process in started:
            process.terminate()
        for _, process in started:
            process.wait(timeout=30)


def test_a_limit_of_n_per_minute_admits_n_across_two_router_processes(
    two_replicas: list[str], http: httpx.Client, backend_url: str
) -> None:
    key = create(backend_url, ApiKey("across", rpm=4))
    body = {"model": "local", "messages": [{"role": "user", "content": "Hi?"}]}
    headers = {"Authorization": f"Bearer {key}"}
    statuses = [
        http.post(f"{two_replicas[i % 2]}/v1/chat/completions", json=body, headers=headers).status_code
        for i in range(10)
    ]
    assert statuses.count(200) == 4 and statuses.count(429) == 6, statuses


def test_tenant_labels_are_bounded() -> None:
    gate = Gate(None, None, None)
    labels = [gate.label(Caller(f"tenant-{i}", ApiKey(f"tenant-{i}"))) for i in range(MAX_TENANT_LABELS + 5)]
    assert labels[:MAX_TENANT_LABELS] == [f"tenant-{i}" for i in range(MAX_TENANT_LABELS)]
    assert labels[MAX_TENANT_LABELS:] == ["other"] * 5
    assert gate.label(Caller("tenant-3", ApiKey("tenant-3"))) == "tenant-3"


@pytest.fixture(scope="module")
def upstream() -> Iterator[FaultServer]:
    server = FaultServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def remote_proxy(
    serve: Callable[..., Served],
    upstream: FaultServer,
    backend_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Served:
    path = tmp_path_factory.mktemp("remote") / "remote.yaml"
    path.write_text(
        f"""\
auth: required
targets:
  remote:
    {{kind: litellm, model: openai/ok, api_base: "{upstream.base_url}", api_key_env: HOME, num_retries: 0}}
rules:
  - action: answer_with
    target: remote
"""
    )
    return serve(load_policy(path), backend_url, admin_key=ADMIN)


def streamed(http: httpx.Client, proxy: Served, key: str, **body: object) -> list[dict[str, object]]:
    payload = {"model": "router", "messages": [{"role": "user", "content": "Hi?"}], "stream": True, **body}
    headers = {"Authorization": f"Bearer {key}"}
    with http.stream(
        "POST", f"{proxy.base_url}/v1/chat/completions", json=payload, headers=headers
    ) as response:
        assert response.status_code == 200
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(event) for event in events[:-1]]


def test_a_stream_counts_its_tokens_whether_or_not_the_client_asked_for_usage(
    remote_proxy: Served, http: httpx.Client, backend_url: str, upstream: FaultServer
) -> None:
    key = create(backend_url, ApiKey("streamer", tpm=1000))
    tokens = "confidence-router:limit:{streamer}:tokens"
    client = direct_client(backend_url)
    plain = streamed(http, remote_proxy, key)
    assert not any("usage" in chunk for chunk in plain)  # not asked for, not shown
    assert upstream.recorded()[-1].body["stream_options"] == {"include_usage": True}  # type: ignore[index]
    deadline = time.monotonic() + 5
    while client.hget(tokens, "level") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert float(client.hget(tokens, "level") or 1000) < 1000 - FAULT_USAGE["total_tokens"] + 5
    asked = streamed(http, remote_proxy, key, stream_options={"include_usage": True})
    usage = asked[-1]["usage"]
    assert isinstance(usage, dict)
    assert {name: usage[name] for name in FAULT_USAGE} == FAULT_USAGE


def test_serving_beyond_loopback_with_auth_off_warns_at_start_up(tmp_path: Path, policy: Policy) -> None:
    path = tmp_path / "open.yaml"
    path.write_text(policy.model_copy(update={"auth": "off"}).model_dump_json())
    command = [sys.executable, "-m", "router", "serve", "--policy", str(path), "--host", "0.0.0.0"]
    process = subprocess.Popen(
        [*command, "--port", str(free_port())], stderr=subprocess.PIPE, text=True, env=os.environ
    )
    try:
        assert process.stderr is not None
        seen = [process.stderr.readline() for _ in range(3)]
        assert any("with auth off" in line and "WARNING" in line for line in seen), seen
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_bare_auth_off_in_yaml_means_off(tmp_path: Path) -> None:
    path = tmp_path / "off.yaml"
    rest = "targets: {local: {kind: local}}\nrules: [{action: answer_with, target: local}]\n"
    path.write_text("auth: off\n" + rest)
    assert load_policy(path).auth == "off"
    path.write_text("auth: on\n" + rest)
    with pytest.raises(PolicyError, match=r"off.yaml:1: auth: Input should be 'off' or 'required'"):
        load_policy(path)
