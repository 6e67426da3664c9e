"""The ResilientStore against Redis of the test's own (one server, a Cluster, a master behind a Sentinel),
killed, frozen and restarted for real."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator

import pytest
import redis

from policies import Decision
from policies.schema import MonitoringSpec
from router.feedback import FEEDBACK_WINDOW, DecisionLog, Judged
from router.state import MemoryStore, RedisStore, ResilientStore, StoreUnavailable, open_store
from tests.redis_process import KINDS, Backend, Kind, running_redis

PREFIX = "confidence-router:"


@pytest.fixture(scope="module", params=KINDS)
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    kind: Kind = request.param
    with running_redis(tmp_path_factory.mktemp(kind), kind) as started:
        yield started


@pytest.fixture
def server(backend: Backend) -> Backend:
    """The module's backend of this kind, running, answering and empty whatever the last test did to it."""
    backend.reset()
    return backend


def resilient(server: Backend, max_pending: int = 10_000) -> ResilientStore:
    return ResilientStore(RedisStore(server.url), max_pending=max_pending, probe_interval_s=0.1)


async def recovered(store: ResilientStore, timeout_s: float = 10) -> float:
    """Seconds until the store is healthy again."""
    started = time.monotonic()
    while not store.health().up:
        assert time.monotonic() - started < timeout_s, "the store never recovered"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def test_degraded_reads_and_writes_then_replay_in_order(server: Backend) -> None:
    async def go() -> None:
        store = resilient(server)
        try:
            await store.set("before", "1")
            await store.push("w", "a", max_len=5)
            await store.push("w", "b", max_len=5)
            await store.append("log", "a", max_len=3, ttl_s=60)
            server.kill()

            assert await store.get("before") == "1"  # from the write-through mirror
            health = store.health()
            assert (health.mode, health.up, health.outages) == ("degraded", False, 1)
            for value in "cdefg":
                await store.push("w", value, max_len=5)
            await store.set("k", "first", ttl_s=60)
            await store.set("k", "second", ttl_s=60)  # the later write wins after the replay too
            assert await store.set_if_absent("once", "x", ttl_s=60)
            assert not await store.set_if_absent("once", "y")
            await store.set("gone", "v", ttl_s=0.05)  # expires while it waits for Redis
            for value in "bcd":
                await store.append("log", value, max_len=3, ttl_s=60)
            await store.append("log", "stale", max_len=3, ttl_s=0.05)  # so does this row
            assert await store.get("k") == "second"
            assert await store.recent("w", 10) == ["c", "d", "e", "f", "g"]
            assert await store.recent("log", 10) == []  # a log has no local copy: no replica reads it
            assert store.health().pending_writes == 13

            server.start()  # the AOF brings back what Redis had acknowledged
            await asyncio.sleep(0.1)
            await recovered(store)
            assert store.health().pending_writes == 0 and store.health().dropped_writes == 0

            direct = server.client()
            assert direct.lrange(PREFIX + "w", 0, -1) == ["c", "d", "e", "f", "g"]
            assert direct.get(PREFIX + "before") == "1"
            assert direct.get(PREFIX + "k") == "second"
            assert direct.get(PREFIX + "once") == "x"
            assert direct.get(PREFIX + "gone") is None
            assert direct.lrange(PREFIX + "log", 0, -1) == ["b", "c", "d"]
            assert 0 < direct.pttl(PREFIX + "log") <= 60_000
            assert 0 < direct.pttl(PREFIX + "k") <= 60_000  # what was left of the TTL, not a new one
            assert await store.get("k") == "second"  # and reads go to Redis again
            direct.set(PREFIX + "k", "from another replica")
            assert await store.get("k") == "from another replica"
        finally:
            await store.close()

    asyncio.run(go())


def test_a_healthy_read_of_a_whole_window_is_kept_for_an_outage(server: Backend) -> None:
    async def go() -> None:
        store = resilient(server)
        try:
            other = server.client()  # another replica's pushes
            other.rpush(PREFIX + "w", "x", "y")
            await store.push("w", "mine", max_len=10)
            assert await store.recent("w", 10) == ["x", "y", "mine"]
            server.kill()
            assert await store.recent("w", 10) == ["x", "y", "mine"]
        finally:
            await store.close()

    asyncio.run(go())


def test_a_hung_redis_costs_one_timeout_then_nothing(server: Backend) -> None:
    async def go() -> None:
        store = resilient(server)
        try:
            await store.set("k", "v")
            server.freeze()  # connections are accepted and never answered
            started = time.monotonic()
            assert await store.get("k") == "v"
            first = time.monotonic() - started
            started = time.monotonic()
            for _ in range(20):
                await store.set("k", "w")
                assert await store.get("k") == "w"
            rest = time.monotonic() - started
            assert 0.5 < first < 3 and rest < 0.1, (first, rest)
            server.thaw()
            await recovered(store)
            assert server.client().get(PREFIX + "k") == "w"
        finally:
            server.thaw()
            await store.close()

    asyncio.run(go())


def test_a_full_buffer_refuses_writes_and_replays_what_it_kept(server: Backend) -> None:
    async def go() -> None:
        store = resilient(server, max_pending=3)
        try:
            await store.set("up", "1")
            server.kill()
            for i in range(3):
                await store.push("w", str(i), max_len=10)
            with pytest.raises(StoreUnavailable):
                await store.push("w", "lost", max_len=10)
            with pytest.raises(StoreUnavailable):
                await store.set_if_absent("marker", "x")
            assert await store.recent("w", 10) == ["0", "1", "2", "lost"]  # the mirror has it anyway
            assert await store.get("marker") is None  # but not a marker, so that a retry is no "duplicate"
            assert store.health().dropped_writes == 2 and store.health().pending_writes == 3
            server.start()
            await recovered(store)
            assert server.client().lrange(PREFIX + "w", 0, -1) == ["0", "1", "2"]
            await store.push("w", "3", max_len=10)  # healthy again: no bound applies
        finally:
            await store.close()

    asyncio.run(go())


def test_feedback_is_refused_rather_than_lost_and_the_decision_log_never_fails(
    server: Backend,
) -> None:
    decision = Decision("answer_with", "local", "scored", 0.7, None, 0)

    async def go() -> None:
        store = resilient(server, max_pending=3)
        log = DecisionLog(store, MonitoringSpec(), "scorer-v1", retained=100)
        try:
            assert await log.record("a" * 32, decision, 0.4, Judged("scorer-model", 0.4, 0.7), asked=True)
            server.kill()
            assert await log.record(
                "b" * 32, decision, 0.5, Judged("scorer-model", 0.5, 0.7), asked=True
            )  # two writes buffered: one slot left
            with pytest.raises(StoreUnavailable):
                await log.feedback("a" * 32, 1.0)  # needs two (marker and record): refused, nothing kept
            assert await log.record(
                "c" * 32, decision, 0.6, Judged("scorer-model", 0.6, 0.7), asked=True
            )  # the last slot: its decision is kept, its traffic entry dropped, and no error
            assert not await log.record(
                "d" * 32, decision, 0.6, Judged("scorer-model", 0.6, 0.7), asked=True
            )  # beyond the bound: dropped (its answer says it was not kept), and no error
            assert store.health().pending_writes == 3
            server.start()
            await recovered(store)
            assert await log.feedback("a" * 32, 1.0)  # the retry is recorded, not taken for a duplicate
            records = server.client().lrange(PREFIX + FEEDBACK_WINDOW, 0, -1)
            assert [json.loads(r)["label"] for r in records] == [1.0]
            assert server.client().exists(PREFIX + "decision:" + "b" * 32)
        finally:
            await store.close()

    asyncio.run(go())


def test_one_log_line_per_outage_without_keys(server: Backend, caplog: pytest.LogCaptureFixture) -> None:
    secret = "prompt-hash-0123456789abcdef"

    async def go() -> None:
        store = resilient(server)
        try:
            for outage in (1, 2):
                await store.set(secret, "label")
                server.kill()
                await asyncio.gather(*(store.set(f"{secret}{i}", "label") for i in range(50)))
                await asyncio.gather(*(store.get(secret) for _ in range(50)))
                await asyncio.sleep(0.3)  # a few failed probes: no more lines either
                server.start()
                await recovered(store)
                assert store.health().outages == outage
        finally:
            await store.close()

    with caplog.at_level(logging.INFO, logger="router"):
        asyncio.run(go())
    lines = [r for r in caplog.records if r.name == "router"]
    warnings = [r.getMessage() for r in lines if r.levelno == logging.WARNING]
    recoveries = [r.getMessage() for r in lines if "is back" in r.getMessage()]
    assert len(warnings) == 2 and all("Redis is unreachable" in w for w in warnings), warnings
    assert len(recoveries) == 2 and all("50 buffered writes replayed" in r for r in recoveries), recoveries
    assert len(lines) == 4
    assert not any(secret in r.getMessage() for r in lines)


def test_programming_errors_are_not_outages(server: Backend) -> None:
    async def go() -> None:
        store = resilient(server)
        try:
            server.client().set(PREFIX + "w", "a string, not a list")
            with pytest.raises(redis.exceptions.ResponseError):
                await store.push("w", "x", max_len=3)
            assert store.health().mode == "ok" and store.health().outages == 0
        finally:
            await store.close()

    asyncio.run(go())


def test_open_store_wraps_redis_and_memory_stays_memory(server: Backend) -> None:
    memory = open_store(None)
    assert isinstance(memory, MemoryStore) and memory.health().mode == "memory" and memory.health().up
    wrapped = open_store(server.url)
    assert isinstance(wrapped, ResilientStore) and wrapped.health().mode == "ok"
    asyncio.run(wrapped.close())


def test_a_redis_that_cannot_write_is_an_outage_and_nothing_kept_is_dropped(server: Backend) -> None:
    async def go() -> None:
        store = resilient(server)
        direct = server.client()
        try:
            await store.push("w", "a", max_len=10)
            # At maxmemory with no eviction Redis still answers PING but refuses writes (OOM), as a replica
            # after a failover refuses them (READONLY): the store keeps the writes until it takes them again.
            direct.config_set("maxmemory-policy", "noeviction")
            direct.config_set("maxmemory", "1")
            await store.push("w", "b", max_len=10)
            await store.set("k", "v")
            assert store.health().mode == "degraded" and store.health().pending_writes == 2
            await asyncio.sleep(0.3)  # probes answer, replays are refused: still degraded, still kept
            assert store.health().mode == "degraded" and store.health().pending_writes == 2
            direct.config_set("maxmemory", "0")
            await recovered(store)
            assert direct.lrange(PREFIX + "w", 0, -1) == ["a", "b"]
            assert direct.get(PREFIX + "k") == "v" and store.health().dropped_writes == 0
        finally:
            await store.close()

    asyncio.run(go())
