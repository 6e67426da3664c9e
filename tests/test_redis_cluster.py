"""Redis at scale: the URL forms, hash tags on a real three-node Cluster, a Cluster with one node away, and
a Sentinel failover under a serving store. The shared suites (tests/test_state.py, test_resilient_store.py,
test_access.py, test_feedback.py, test_budget.py) run on each backend besides."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.access.keys import KEYS, NAMES, VERSION, ApiKey, KeyRegistry, counter_keys
from router.access.limits import Limits
from router.state import (
    PROBE_ENV,
    RedisStore,
    RedisTarget,
    RedisUrlError,
    ResilientStore,
    open_store,
    parse_redis_url,
    redis_client,
)
from tests.redis_process import RedisClusterProcess, RedisSentinelProcess, direct_client, running_redis

PREFIX = "confidence-router:"


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("redis://127.0.0.1:6379/2", RedisTarget("single")),
        ("unix:///run/redis.sock", RedisTarget("single")),
        (
            "redis+cluster://a:7000,b:7001,[::1]:7002,c",
            RedisTarget("cluster", (("a", 7000), ("b", 7001), ("::1", 7002), ("c", 6379))),
        ),
        (
            "rediss+cluster://user:p%40ss@a:7000",
            RedisTarget("cluster", (("a", 7000),), username="user", password="p@ss", tls=True),
        ),
        (
            "redis+sentinel://:secret@s1,s2:26380/primary/3",
            RedisTarget("sentinel", (("s1", 26379), ("s2", 26380)), "primary", 3, password="secret"),
        ),
    ],
)
def test_the_url_names_the_topology(url: str, target: RedisTarget) -> None:
    assert parse_redis_url(url) == target


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("localhost:6379", "no scheme"),
        ("tcp://a:1", "unknown scheme 'tcp'"),
        ("redis+clusters://a:1", "unknown scheme 'redis+clusters'"),
        ("redis://a:notaport", "Port could not be cast to integer value"),
        ("redis+cluster://a:1/0", "a cluster has one database: give no /path"),
        ("redis+cluster://a:1?ssl=true", "redis+cluster:// takes no ?options"),
        ("redis+cluster://a:99999", "host 'a:99999': the port is not a number from 1 to 65535"),
        ("redis+cluster://a:1,,b:2", "host '' has no name"),
        ("redis+sentinel://s:26379", "give the Sentinel's service name as the path"),
        ("redis+sentinel://s:26379/primary/zero", "database 'zero' is not a number"),
    ],
)
def test_a_url_the_router_cannot_use_is_one_line_naming_the_problem(url: str, problem: str) -> None:
    with pytest.raises(RedisUrlError) as raised:
        open_store(url)
    message = str(raised.value)
    assert "\n" not in message and problem in message
    assert message.startswith(f"redis URL '{url}': ")
    assert "redis+cluster://" in message and "redis+sentinel://" in message  # and the forms it takes


def test_a_password_in_a_bad_url_is_not_shown() -> None:
    with pytest.raises(RedisUrlError) as raised:
        parse_redis_url("redis+cluster://me:hunter2@a:1/0")
    assert "hunter2" not in str(raised.value) and "me:***@a:1/0" in str(raised.value)


@pytest.mark.parametrize("probe", ["0", "-1", "soon", "nan"])
def test_a_probe_interval_that_is_no_number_of_seconds_is_one_line(
    probe: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PROBE_ENV, probe)
    with pytest.raises(ValueError, match=rf"^{PROBE_ENV}='{probe}': give a number of seconds above 0$"):
        open_store("redis://127.0.0.1:6379/15")


def test_router_serve_with_a_bad_url_fails_the_start_in_one_line(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "router", "serve", "--port", "1", "--redis-url", "redis+cluster://"]
    failed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert failed.returncode == 2
    [line] = failed.stderr.strip().splitlines()
    assert line.startswith("error: redis URL 'redis+cluster://': host '' has no name"), line


def test_keys_that_move_together_share_a_slot_and_callers_spread(cluster_url: str) -> None:
    client = direct_client(cluster_url)
    slot = lambda key: client.keyslot(PREFIX + key)  # noqa: E731
    assert slot(KEYS) == slot(NAMES) == slot(VERSION)
    for name in ("a", "team-b", "c.d"):
        assert len({slot(k) for k in counter_keys(name)}) == 1
    names = [f"caller-{i}" for i in range(12)]
    nodes = {client.get_node_from_key(PREFIX + counter_keys(n)[0]).name for n in names}
    assert len(nodes) > 1  # so what follows runs across nodes

    async def run() -> list[tuple[ApiKey, float]]:
        redis = redis_client(cluster_url, decode_responses=True)
        registry = KeyRegistry(redis)
        store = ResilientStore(RedisStore(cluster_url))
        limits = Limits(store, store.client)
        try:
            for name in names:
                await registry.create(ApiKey(name, rpm=2, budget_usd=10.0))
                assert (await limits.admit(ApiKey(name, rpm=2, budget_usd=10.0))).refused is None
                limits.settle(ApiKey(name, rpm=2, budget_usd=10.0), 0, 1.5)
            await limits.close()
            listed = await registry.listed()
            await registry.revoke(names[0])
            return listed
        finally:
            await redis.aclose()
            await store.close()

    listed = asyncio.run(run())
    assert [(k.name, spent) for k, spent in listed] == [(n, 1.5) for n in sorted(names)]
    assert not client.exists(*(PREFIX + k for k in counter_keys(names[0])))  # revoked: its counters too
    assert client.exists(PREFIX + counter_keys(names[1])[2])


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[RedisClusterProcess]:
    with running_redis(tmp_path, "cluster") as cluster:
        yield cluster


async def recovered(store: ResilientStore, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not store.health().up:
        assert time.monotonic() < deadline, "the store never recovered"
        await asyncio.sleep(0.05)


def test_one_node_away_degrades_the_store_and_its_writes_reach_the_cluster_when_it_is_back(
    own_cluster: RedisClusterProcess,
) -> None:
    away = own_cluster.nodes[0]
    client = direct_client(own_cluster.url)
    keys = [f"k{i}" for i in range(30)]  # some in every node's slots
    on_away = [k for k in keys if client.get_node_from_key(PREFIX + k).port == away.port]
    assert on_away and len(on_away) < len(keys)

    async def run() -> None:
        store = ResilientStore(RedisStore(own_cluster.url), probe_interval_s=0.1)
        try:
            await store.set("before", "1")
            away.kill()
            for key in keys:  # the first key on the node away degrades the store
                await store.set(key, "v")
                await store.push("window", key, max_len=100)
            assert store.health().mode == "degraded"
            assert await store.get(on_away[0]) == "v"  # from this replica's own copy
            away.start()
            await recovered(store)
        finally:
            await store.close()

    asyncio.run(run())
    client = direct_client(own_cluster.url)
    assert all(client.get(PREFIX + k) == "v" for k in keys)
    assert client.get(PREFIX + "before") == "1"
    assert client.lrange(PREFIX + "window", 0, -1) == keys  # in order, across the outage


@pytest.fixture
def failing_over(tmp_path: Path) -> Iterator[RedisSentinelProcess]:
    sentinel = RedisSentinelProcess(tmp_path / "redis-sentinel", with_replica=True)
    try:
        yield sentinel.start()
    finally:
        sentinel.stop_all()


def test_after_a_sentinel_failover_the_store_writes_to_the_new_master(
    failing_over: RedisSentinelProcess,
) -> None:
    first = failing_over.master

    async def run() -> None:
        store = ResilientStore(RedisStore(failing_over.url), probe_interval_s=0.1)
        try:
            await store.push("window", "before", max_len=10)
            failing_over.failover()
            # The old master now refuses writes (READONLY): at most a short outage, nothing lost.
            for i in range(5):
                await store.push("window", f"after-{i}", max_len=10)
            await recovered(store)
            await store.push("window", "healthy", max_len=10)
        finally:
            await store.close()

    asyncio.run(run())
    assert failing_over.master is not first
    held = failing_over.master.client().lrange(PREFIX + "window", 0, -1)
    assert held == ["before", *(f"after-{i}" for i in range(5)), "healthy"]
