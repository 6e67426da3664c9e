"""What the router keeps in Redis is bounded by its policy, not by traffic, and Redis's eviction policy is
checked: real Redis throughout (the tests' own, one server, a Cluster, a master behind a Sentinel; and
servers of a test's own with `maxmemory`, an eviction policy or an ACL), the tiny model answering over real
HTTP.

- with a small per-tenant cap, one tenant's decisions never push out another's (in Redis and in process),
  and a decision pushed out takes its feedback marker with it; decisions kept during an outage are replayed
  under the same cap;
- a Redis at its `maxmemory` with the documented `volatile-lru` keeps every API key and budget while
  requests keep flowing (old decisions and cached scores are evicted instead);
- an `allkeys-lru` Redis is reported (a WARNING line and /readyz), and a Redis whose ACL forbids CONFIG is
  served all the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from policies import Decision, load_policy
from policies.schema import DecisionsSpec, MonitoringSpec
from router.access.keys import KEYS, NAMES, ApiKey, KeyRegistry, counter_keys
from router.feedback import DecisionLog, UnknownRequest, decisions_index
from router.state import MemoryStore, RedisStore, ResilientStore, open_store, read_eviction, redis_client
from tests.conftest import Served, head_scorer_yaml
from tests.redis_process import RedisProcess, direct_client, running_redis
from tests.test_access import access_policy
from tests.test_metrics import Collecting

PREFIX = "confidence-router:"
DECISION = Decision("answer_with", "local", "scored", 0.7, None, 0)
CAP = 5


def capped(per_tenant: int = CAP, sample: float = 0.0) -> MonitoringSpec:
    return MonitoringSpec(decisions=DecisionsSpec(sample=sample, per_tenant=per_tenant))


def ids(count: int) -> list[str]:
    return [uuid.uuid4().hex for _ in range(count)]


def test_one_tenants_decisions_never_push_out_anothers(fresh_backend: str) -> None:
    quiet, noisy = ids(3), ids(4 * CAP)

    async def go() -> None:
        store = open_store(fresh_backend)
        log = DecisionLog(store, capped(), "scorer-v1", retained=100)
        try:
            for request_id in quiet:
                assert await log.record(request_id, DECISION, 0.5, tenant="quiet", asked=True)
            assert await log.record(noisy[0], DECISION, 0.5, tenant="noisy", asked=True)
            assert await log.feedback(noisy[0], 1.0, "noisy", any_tenant=False)
            for request_id in noisy[1:]:
                assert await log.record(request_id, DECISION, 0.5, tenant="noisy", asked=True)
            # Not asked for, and the sample is 0: not kept.
            assert not await log.record(ids(1)[0], DECISION, 0.5, tenant="quiet")
            with pytest.raises(UnknownRequest):
                await log.feedback(noisy[0], 1.0, "noisy", any_tenant=False)
            for request_id in quiet:
                assert await log.feedback(request_id, 0.0, "quiet", any_tenant=False)
        finally:
            await store.close()

    asyncio.run(go())
    redis = direct_client(fresh_backend)
    kept = {rid for rid in [*quiet, *noisy] if redis.exists(f"{PREFIX}decision:{rid}")}
    assert kept == {*quiet, *noisy[-CAP:]}  # the noisy tenant's newest CAP, and all of the quiet one's
    assert redis.llen(PREFIX + decisions_index("noisy")) == CAP
    assert redis.llen(PREFIX + decisions_index("quiet")) == len(quiet)
    assert not redis.exists(f"{PREFIX}feedback:{noisy[0]}")  # gone with its decision
    written = [
        *(f"{PREFIX}decision:{rid}" for rid in kept),
        *(f"{PREFIX}feedback:{rid}" for rid in quiet),
        *(PREFIX + decisions_index(tenant) for tenant in ("quiet", "noisy")),
    ]
    assert all(redis.pttl(key) > 0 for key in written)  # each one expires by itself too


def test_the_in_process_store_keeps_the_same_cap() -> None:
    quiet, noisy = ids(3), ids(4 * CAP)

    async def go() -> set[str]:
        store = MemoryStore()
        log = DecisionLog(store, capped(), "scorer-v1", retained=100)
        for tenant, request_ids in (("quiet", quiet), ("noisy", noisy)):
            for request_id in request_ids:
                assert await log.record(request_id, DECISION, 0.5, tenant=tenant, asked=True)
        return {rid for rid in [*quiet, *noisy] if await store.get(f"decision:{rid}") is not None}

    assert asyncio.run(go()) == {*quiet, *noisy[-CAP:]}


def test_decisions_kept_during_an_outage_are_replayed_under_the_same_cap(tmp_path: Path) -> None:
    with running_redis(tmp_path) as server:
        before, during = ids(2), ids(CAP + 2)

        async def go() -> None:
            store = ResilientStore(RedisStore(server.url), probe_interval_s=0.1)
            log = DecisionLog(store, capped(), "scorer-v1", retained=100)
            try:
                for request_id in before:
                    await log.record(request_id, DECISION, 0.5, tenant="t", asked=True)
                server.kill()
                for request_id in during:
                    assert await log.record(request_id, DECISION, 0.5, tenant="t", asked=True)
                assert not store.health().up
                server.start()
                deadline = time.monotonic() + 10
                while not store.health().up:
                    assert time.monotonic() < deadline, "the store never recovered"
                    await asyncio.sleep(0.05)
            finally:
                await store.close()

        asyncio.run(go())
        redis = server.client()
        kept = [rid for rid in [*before, *during] if redis.exists(f"{PREFIX}decision:{rid}")]
        assert kept == during[-CAP:]
        assert redis.llen(PREFIX + decisions_index("t")) == CAP


@contextlib.contextmanager
def own_redis(folder: Path, *options: str) -> Iterator[RedisProcess]:
    server = RedisProcess(folder, extra=options)
    try:
        yield server.start()
    finally:
        server.kill()


@contextlib.contextmanager
def router_log(level: int = logging.INFO) -> Iterator[list[logging.LogRecord]]:
    handler = Collecting()
    logger = logging.getLogger("router")
    saved = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved)


def create_keys(url: str, names: list[str]) -> dict[str, str]:
    async def run() -> dict[str, str]:
        client = redis_client(url, decode_responses=True)
        try:
            registry = KeyRegistry(client)
            return {name: await registry.create(ApiKey(name, budget_usd=1e12)) for name in names}
        finally:
            await client.aclose()

    return asyncio.run(run())


def fill(redis: Any, limit: int) -> None:
    """Old decisions (a TTL of a day), until Redis is at its maxmemory and has begun to evict."""
    record = '{"outcome": "answer", "target": "local", "rule": "scored"}' + " " * 300
    while int(redis.info("stats")["evicted_keys"]) == 0:
        with redis.pipeline(transaction=False) as pipe:
            for _ in range(500):
                pipe.set(f"{PREFIX}decision:{uuid.uuid4().hex}", record, px=86_400_000)
            pipe.execute()
        assert int(redis.info("memory")["used_memory"]) < 2 * limit


def test_at_maxmemory_volatile_lru_keeps_every_api_key_and_budget_while_requests_flow(
    serve: Callable[..., Served], tiny_model: Path, tiny_head: Path, tmp_path: Path
) -> None:
    limit = 4 * 1024 * 1024
    options = ("--maxmemory", str(limit), "--maxmemory-policy", "volatile-lru")
    with own_redis(tmp_path / "redis", *options) as server:
        keys = create_keys(server.url, [f"tenant-{i}" for i in range(20)])
        policy = tmp_path / "policy.yaml"
        scorer = head_scorer_yaml(tiny_model, tiny_head)
        policy.write_text(access_policy(scorer, "monitoring: {decisions: {sample: 1}}"))  # keeps them all
        served = serve(load_policy(policy), server.url)
        try:
            at_maxmemory(served, server.client(), keys, limit)
        finally:
            served.stop()


def at_maxmemory(served: Served, redis: Any, keys: dict[str, str], limit: int) -> None:
    assert httpx.get(f"{served.base_url}/readyz").json()["eviction"] == {
        "policy": "volatile-lru",
        "maxmemory_bytes": limit,
        "safe": True,
    }
    names = list(keys)

    def chat(name: str, question: str) -> httpx.Response:
        body = {"model": "router", "messages": [{"role": "user", "content": question}]}
        headers = {"Authorization": f"Bearer {keys[name]}"}
        return httpx.post(f"{served.base_url}/v1/chat/completions", json=body, headers=headers, timeout=60)

    assert all(chat(name, f"First question of {name}?").status_code == 200 for name in names)
    spent = spend(redis, names)

    fill(redis, limit)
    evicted = int(redis.info("stats")["evicted_keys"])
    for i in range(200):  # each keeps its decision and caches its score
        name = names[i % len(names)]
        response = chat(name, f"Question {i} of {name}: is it kept?")
        assert response.status_code == 200, response.text
    assert int(redis.info("stats")["evicted_keys"]) > evicted  # at maxmemory throughout
    assert int(redis.info("memory")["used_memory"]) <= limit * 1.05

    assert redis.hlen(PREFIX + KEYS) == redis.hlen(PREFIX + NAMES) == len(names)
    after = spend(redis, names, above=spent)
    assert all(after[name] > spent[name] for name in names)
    assert httpx.get(f"{served.base_url}/readyz").json()["store"] == "ok"  # no write was refused


def spend(redis: Any, names: list[str], above: dict[str, float] | None = None) -> dict[str, float]:
    """Each key's spend in Redis, once above 0 (or `above`): debits are made off the response path."""
    floor = above or dict.fromkeys(names, 0.0)
    deadline = time.monotonic() + 10
    while True:
        found = {name: float(redis.get(PREFIX + counter_keys(name)[2]) or 0) for name in names}
        if all(found[name] > floor[name] for name in names) or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_an_allkeys_redis_is_reported_in_the_log_and_in_readyz(
    serve: Callable[..., Served], tiny_model: Path, tiny_head: Path, tmp_path: Path
) -> None:
    with own_redis(tmp_path / "redis", "--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru") as server:
        policy = tmp_path / "policy.yaml"
        policy.write_text(
            access_policy(head_scorer_yaml(tiny_model, tiny_head)).replace("auth: required\n", "")
        )
        with router_log() as records:
            served = serve(load_policy(policy), server.url)
        readiness = httpx.get(f"{served.base_url}/readyz").json()
        served.stop()
        warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
        assert any(
            "maxmemory-policy is allkeys-lru: at maxmemory it may evict API keys, budgets and spend" in line
            and "set maxmemory-policy volatile-lru" in line
            for line in warnings
        ), warnings
        ready = readiness
        assert ready["status"] == "ready"
        assert ready["eviction"]["policy"] == "allkeys-lru" and ready["eviction"]["safe"] is False
        assert "may evict API keys" in ready["eviction"]["warning"]


def test_a_redis_whose_acl_forbids_config_is_unknown_not_an_error(tmp_path: Path) -> None:
    with own_redis(tmp_path / "redis") as server:
        admin = server.client()
        admin.acl_setuser(
            "router", enabled=True, passwords=["+secret"], keys=["*"], commands=["+@all", "-config"]
        )
        url = f"redis://router:secret@127.0.0.1:{server.port}/0"

        async def go() -> None:
            store = RedisStore(url)
            try:
                eviction = await read_eviction(store.client)
            finally:
                await store.close()
            assert eviction.policy is None and eviction.safe is None
            assert "NoPermissionError" in eviction.unread
            assert str(eviction.readiness()["warning"]).startswith("could not read Redis's maxmemory-policy")

        asyncio.run(go())
