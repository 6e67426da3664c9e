"""Shadow answers (the policy's `explore:`) over real HTTP and real Redis: the tiny model and remote targets
served over loopback sockets (tests/faults.py, tests/provider.py). The exported row holds the client's
answer and each candidate's, the client's response is the same with exploring on and off, a full queue
drops and counts, the daily budget holds across two routers sharing Redis, a failing candidate is counted,
the policy's mistakes are located, and without Redis nothing is explored."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from commands import app
from policies import PolicyError, load_policy
from router.stages.exploring import DailyBudget, budget_key
from router.state import RedisStore, ResilientStore
from tests import faults
from tests.conftest import Served, emptied, free_port, head_scorer_yaml
from tests.faults import FaultServer
from tests.provider import ANSWER as HELD_ANSWER
from tests.provider import Provider
from tests.redis_process import direct_client

PREFIX = "confidence-router:"
ROWS = f"{PREFIX}capture:-"
ADMIN = "admin-secret"
REMOTE_DOLLARS = (faults.USAGE["prompt_tokens"] + faults.USAGE["completion_tokens"]) / 1e6
"""What one answer of `remote` costs at its declared $1 per million tokens, in and out."""


def explore_policy(scorer: str, faults_url: str, held_url: str, explore: str) -> str:
    """Local answers unless the user is `remote`; every request captured; `explore` is the explore: block's
    body (empty: no explore:)."""
    block = f"explore:\n  {explore}\n" if explore else ""
    return f"""\
name: explore
{scorer}targets:
  local: {{kind: local, max_tokens: 6}}
  remote:
    kind: openai
    model: ok
    api_base: "{faults_url}"
    num_retries: 0
    cost: {{input_per_million: 1.0, output_per_million: 1.0}}
  broken: {{kind: openai, model: status-500, api_base: "{faults_url}", num_retries: 0}}
  held: {{kind: openai, model: held, api_base: "{held_url}", num_retries: 0}}
monitoring: {{decisions: {{sample: 0.0}}}}
rules:
  - name: refused
    when: {{user: refuse-me}}
    action: refuse
  - name: remote
    when: {{user: remote}}
    action: answer_with
    target: remote
  - name: scored
    when: {{confidence_at_least: 0.0}}
    action: answer_with
    target: local
  - action: answer_with
    target: local
capture:
  share: 1.0
{block}"""


EVERY = "share: 1.0\n  targets: [local, remote, broken]\n  budget_usd_per_day: 1.0"


@dataclass
class Site:
    proxy: Served
    path: Path
    redis_url: str
    scorer: str
    upstream: FaultServer
    held: Provider
    policy: str = ""

    def text(self, explore: str) -> str:
        return explore_policy(self.scorer, self.upstream.base_url, self.held.base_url, explore)

    def use(self, http: httpx.Client, explore: str) -> None:
        """Serve the policy with this explore: block (reloaded only when it changes)."""
        text = self.text(explore)
        if text != self.policy:
            self.path.write_text(text)
            auth = {"Authorization": f"Bearer {ADMIN}"}
            response = http.post(f"{self.proxy.base_url}/admin/reload", headers=auth)
            assert response.status_code == 200, response.text
            self.policy = text

    def rows(self, count: int, timeout_s: float = 30) -> list[dict[str, Any]]:
        """The captured rows once there are `count` of them."""
        client = direct_client(self.redis_url)
        try:
            deadline = time.monotonic() + timeout_s
            while client.llen(ROWS) < count:
                assert time.monotonic() < deadline, f"fewer than {count} rows after {timeout_s} s"
                time.sleep(0.05)
            return [json.loads(row) for row in client.lrange(ROWS, 0, -1)]
        finally:
            client.close()

    def forget(self) -> None:
        client = direct_client(self.redis_url)
        try:
            client.delete(ROWS, PREFIX + budget_key())
        finally:
            client.close()


@pytest.fixture(scope="module")
def site_once(
    serve: Callable[..., Served],
    untied_model: Path,
    untied_head: Path,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Site]:
    upstream, held = FaultServer(), Provider(held=True)
    scorer = head_scorer_yaml(untied_model, untied_head)
    path = tmp_path_factory.mktemp("explore") / "policy.yaml"
    text = explore_policy(scorer, upstream.base_url, held.base_url, EVERY)
    path.write_text(text)
    proxy = serve(load_policy(path), emptied(redis_url), policy_path=path, admin_key=ADMIN)
    yield Site(proxy, path, redis_url, scorer, upstream, held, text)
    held.close()
    upstream.close()


@pytest.fixture
def site(site_once: Site, http: httpx.Client) -> Site:
    """The module's proxy exploring every captured request with local, remote and broken; nothing kept."""
    site_once.use(http, EVERY)
    site_once.forget()
    return site_once


def ask(http: httpx.Client, base_url: str, question: str, **body: object) -> httpx.Response:
    payload = {"model": "router", "messages": [{"role": "user", "content": question}], **body}
    response = http.post(f"{base_url}/v1/chat/completions", json=payload)
    assert response.status_code == 200, response.text
    return response


def streamed(http: httpx.Client, base_url: str, question: str, **body: object) -> tuple[httpx.Headers, bytes]:
    payload = {"model": "router", "messages": [{"role": "user", "content": question}], "stream": True, **body}
    with http.stream("POST", f"{base_url}/v1/chat/completions", json=payload) as response:
        assert response.status_code == 200
        return response.headers, response.read()


def events(raw: bytes) -> list[dict[str, Any]]:
    lines = [line[6:] for line in raw.decode().splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def samples(http: httpx.Client, base_url: str, name: str, label: str) -> dict[str, float]:
    text = http.get(f"{base_url}/metrics").text
    return {
        sample.labels[label]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def outcomes(http: httpx.Client, base_url: str) -> dict[str, float]:
    return samples(http, base_url, "router_explore_requests_total", "outcome")


def budget_spent(redis_url: str) -> float:
    client = direct_client(redis_url)
    try:
        return float(client.get(PREFIX + budget_key()) or 0)
    finally:
        client.close()


def test_the_exported_row_holds_every_candidates_answer_and_a_failing_one_is_counted(
    site: Site, http: httpx.Client, tmp_path: Path
) -> None:
    base = site.proxy.base_url
    before = outcomes(http, base)
    dollars = samples(http, base, "router_explore_dollars_total", "target").get("remote", 0.0)
    cost = samples(http, base, "router_cost_dollars_total", "target").get("remote", 0.0)
    question = "What is the capital of France?"
    local = ask(http, base, question)  # local answers; remote and broken are asked after
    headers, raw = streamed(http, base, question, user="remote")  # remote streams; local and broken after
    refused = ask(http, base, question, user="refuse-me")  # no target answers: none is asked either
    ids = [r.headers["x-router-request-id"] for r in (local, refused)]
    ids.insert(1, headers["x-router-request-id"])
    rows = {row["id"]: row for row in site.rows(3)}

    assert [rows[i]["target"] for i in ids] == ["local", "remote", None]
    written = local.json()["choices"][0]["message"]["content"]
    # The local shadow answer is what the local target answers the same question.
    assert [rows[i]["shadow"] for i in ids] == [{"remote": faults.ANSWER}, {"local": written}, {}]
    client_got = "".join((c["choices"] or [{}])[0].get("delta", {}).get("content") or "" for c in events(raw))
    assert rows[ids[1]]["answer"] == client_got != ""

    out = tmp_path / "rows.jsonl"
    common = ["--policy", str(site.path), "--redis-url", site.redis_url, "--out", str(out)]
    result = CliRunner().invoke(app, ["traffic", "export", *common])
    assert result.exit_code == 0, result.output
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    assert [record["answer"] for record in exported] == [
        {"local": written, "remote": faults.ANSWER},
        {"remote": client_got, "local": written},
        {},
    ]
    assert list(exported[1]["answer"]) == ["remote", "local"]  # the client's answer first

    after = outcomes(http, base)
    counted = {outcome: after[outcome] - before[outcome] for outcome in after}
    assert counted == {"asked": 2, "failed": 2, "dropped_queue_full": 0, "over_budget": 0}
    spent = samples(http, base, "router_explore_dollars_total", "target")
    assert spent["remote"] - dollars == pytest.approx(REMOTE_DOLLARS)
    assert budget_spent(site.redis_url) == pytest.approx(REMOTE_DOLLARS)
    # Metered apart: the client's remote answer is the one remote cost counted with the clients'.
    costs = samples(http, base, "router_cost_dollars_total", "target")
    assert costs["remote"] - cost == pytest.approx(REMOTE_DOLLARS)


def test_the_client_gets_the_same_response_with_exploring_on_and_off(site: Site, http: httpx.Client) -> None:
    base, question = site.proxy.base_url, "Name a primary colour."
    varying = {"x-router-request-id", "date"}

    def plain() -> tuple[dict[str, str], dict[str, Any]]:
        response = ask(http, base, question)
        body = {k: v for k, v in response.json().items() if k not in ("id", "created")}
        return {k: v for k, v in response.headers.items() if k not in varying}, body

    def stream() -> tuple[dict[str, str], list[Any]]:
        headers, raw = streamed(http, base, question)
        chunks = [(c["choices"], c.get("usage"), c["model"], c["object"]) for c in events(raw)]
        return {k: v for k, v in headers.items() if k not in varying}, chunks

    site.use(http, "share: 1.0\n  targets: [remote]\n  budget_usd_per_day: 1.0")
    on = [plain(), stream()]
    assert [row["shadow"] for row in site.rows(2)] == [{"remote": faults.ANSWER}] * 2  # it was on
    site.use(http, "")
    off = [plain(), stream()]
    assert on == off
    assert [row["shadow"] for row in site.rows(4)[2:]] == [{}, {}]


def test_a_full_queue_drops_the_exploration_and_counts_it_and_the_client_never_waits(
    site: Site, http: httpx.Client
) -> None:
    base = site.proxy.base_url
    site.use(http, "share: 1.0\n  targets: [held]\n  budget_usd_per_day: 1.0\n  concurrency: 1\n  queue: 1")
    before = outcomes(http, base)
    started = time.monotonic()
    asked = [ask(http, base, "First?").headers["x-router-request-id"]]
    assert site.held.arrived.wait(timeout=30)  # the one worker is held by the first request's candidate
    asked += [ask(http, base, f"{which}?").headers["x-router-request-id"] for which in ("Second", "Third")]
    assert time.monotonic() - started < 20

    [dropped] = site.rows(1)  # the third found the queue full: its row is written at once
    assert (dropped["id"], dropped["shadow"]) == (asked[2], {})
    assert outcomes(http, base)["dropped_queue_full"] - before["dropped_queue_full"] == 1
    site.held.released.set()
    rows = site.rows(3)
    assert [row["id"] for row in rows] == [asked[2], asked[0], asked[1]]
    assert [row["shadow"] for row in rows[1:]] == [{"held": HELD_ANSWER}] * 2
    assert outcomes(http, base)["asked"] - before["asked"] == 2

    # A reload closes the router: the row being explored and the one queued are written as they are.
    site.held.arrived.clear()
    site.held.released.clear()
    cut = [ask(http, base, "Fourth?").headers["x-router-request-id"]]
    assert site.held.arrived.wait(timeout=30)
    cut.append(ask(http, base, "Fifth?").headers["x-router-request-id"])
    site.use(http, EVERY)
    rows = site.rows(5)
    site.held.released.set()
    assert sorted((row["id"], row["shadow"]) for row in rows[3:]) == sorted((i, {}) for i in cut)
    assert outcomes(http, base)["failed"] - before["failed"] == 1


def test_the_daily_budget_stops_exploring_across_routers_sharing_redis(
    site: Site, http: httpx.Client, serve: Callable[..., Served]
) -> None:
    # Less than one remote answer: the first is asked (nothing spent yet), and then the day is spent.
    explore = f"share: 1.0\n  targets: [remote]\n  budget_usd_per_day: {REMOTE_DOLLARS / 2}"
    site.use(http, explore)
    other = serve(load_policy(site.path), site.redis_url)
    first, second = site.proxy.base_url, other.base_url
    before = outcomes(http, first)

    ask(http, first, "Spend it?")
    assert site.rows(1)[0]["shadow"] == {"remote": faults.ANSWER}
    assert budget_spent(site.redis_url) == pytest.approx(REMOTE_DOLLARS)
    ask(http, second, "Anything left?")
    ask(http, first, "And here?")
    rows = site.rows(3)
    assert [row["shadow"] for row in rows[1:]] == [{}, {}]
    assert outcomes(http, second) == {"asked": 0, "dropped_queue_full": 0, "over_budget": 1, "failed": 0}
    after = outcomes(http, first)
    assert (after["asked"] - before["asked"], after["over_budget"] - before["over_budget"]) == (1, 1)
    assert budget_spent(site.redis_url) == pytest.approx(REMOTE_DOLLARS)


def test_without_redis_nothing_is_explored() -> None:
    async def go() -> None:
        away = ResilientStore(RedisStore(f"redis://127.0.0.1:{free_port()}/0"), max_pending=0)
        try:
            budget = DailyBudget(away, 100.0)
            assert not await budget.allows()
            assert not away.health().up
            await budget.spend(0.5)  # owed, and added once Redis takes debits again
            assert not await budget.allows()
        finally:
            await away.close(flush_timeout_s=0)

    asyncio.run(go())


def test_a_replica_adds_its_spend_at_most_sync_s_late_and_at_once_at_the_cap(redis_url: str) -> None:
    cleared = direct_client(redis_url)
    cleared.delete(PREFIX + budget_key())
    cleared.close()

    async def go() -> None:
        store = RedisStore(redis_url)
        try:
            budget, other = DailyBudget(store, 1.0, sync_s=3600), DailyBudget(store, 1.0, sync_s=3600)
            assert await budget.allows()
            await budget.spend(0.25)  # nothing added yet this hour: added at once
            assert budget_spent(redis_url) == pytest.approx(0.25)
            await budget.spend(0.25)  # owed: within the hour of the last addition
            assert budget_spent(redis_url) == pytest.approx(0.25)
            assert await other.allows()  # another replica sees what was added
            await budget.spend(0.5)  # reaches the cap: added at once, with what was owed
            assert budget_spent(redis_url) == pytest.approx(1.0)
            assert not await budget.allows()
            assert await other.allows()  # its view is an hour old at most; a fresh one reads the cap
            assert not await DailyBudget(store, 1.0).allows()
            await other.spend(0.1)
            await other.settle()
            assert budget_spent(redis_url) == pytest.approx(1.1)
        finally:
            await store.close()

    asyncio.run(go())


def test_explore_mistakes_name_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(
        """\
targets:
  local: {kind: local}
  large: {kind: openai, model: m, api_base: "http://127.0.0.1:9/v1"}
rules: [{action: answer_with, target: local}]
explore:
  share: 1.0
  budget_usd_per_day: 5
  targets:
    - large
    - nowhere
    - large
"""
    )
    with pytest.raises(PolicyError) as raised:
        load_policy(path)
    assert raised.value.problems == [
        f"{path}:5: explore: needs a capture: block: shadow answers are kept with the captured rows",
        f"{path}:10: explore.targets.1: unknown target 'nowhere' (targets: local, large)",
        f"{path}:11: explore.targets.2: 'large' is listed twice",
    ]
    path.write_text(
        """\
targets: {local: {kind: local}}
rules: [{action: answer_with, target: local}]
capture: {share: 1.0}
explore:
  share: 1.5
  targets: []
"""
    )
    with pytest.raises(PolicyError) as raised:
        load_policy(path)
    assert raised.value.problems == [
        f"{path}:4: explore.budget_usd_per_day: Field required",
        f"{path}:5: explore.share: Input should be less than or equal to 1",
        f"{path}:6: explore.targets: List should have at least 1 item after validation, not 0",
    ]
