"""The state store contract, for the in-process store and for real Redis alike: one server, a Cluster, a
master behind a Sentinel."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from router.state import MemoryStore, RedisStore, StateStore, Write
from tests.conftest import BACKENDS, emptied

Check = Callable[[StateStore], Awaitable[None]]


@pytest.fixture(params=["memory", *BACKENDS])
def run(request: pytest.FixtureRequest) -> Callable[[Check], None]:
    def run(check: Check) -> None:
        async def go() -> None:
            store: StateStore = MemoryStore()
            if request.param in BACKENDS:
                store = RedisStore(emptied(request.getfixturevalue(BACKENDS[request.param])))
            try:
                await check(store)
            finally:
                await store.close()

        asyncio.run(go())

    return run


def test_set_if_absent_has_one_winner(run: Callable[[Check], None]) -> None:
    async def check(store: StateStore) -> None:
        won = await asyncio.gather(*(store.set_if_absent("k", str(i)) for i in range(20)))
        assert won.count(True) == 1
        assert await store.get("k") == str(won.index(True))
        assert await store.set_if_absent("k", "again") is False

    run(check)


def test_keys_expire(run: Callable[[Check], None]) -> None:
    async def check(store: StateStore) -> None:
        await store.set("short", "v", ttl_s=0.05)
        assert await store.set_if_absent("once", "v", ttl_s=0.05)
        await asyncio.sleep(0.3)
        assert await store.get("short") is None
        assert await store.set_if_absent("once", "w")  # the earlier value expired, so this one wins

    run(check)


def test_windows_keep_the_newest_values_in_order(run: Callable[[Check], None]) -> None:
    async def check(store: StateStore) -> None:
        assert await store.recent("w", 5) == []
        for i in range(10):
            await store.push("w", str(i), max_len=4)
        assert await store.recent("w", 100) == ["6", "7", "8", "9"]
        assert await store.recent("w", 2) == ["8", "9"]
        assert await store.recent("w", 0) == []
        await asyncio.gather(*(store.push("w", "x", max_len=4) for _ in range(50)))
        assert await store.recent("w", 100) == ["x"] * 4

    run(check)


def test_logs_keep_the_newest_values_and_expire_after_the_newest(run: Callable[[Check], None]) -> None:
    async def check(store: StateStore) -> None:
        for i in range(6):
            await store.append("log", str(i), max_len=4, ttl_s=0.6)
        assert await store.recent("log", 100) == ["2", "3", "4", "5"]
        await asyncio.sleep(0.4)
        await store.append("log", "6", max_len=4, ttl_s=0.6)  # the whole log lives on
        await asyncio.sleep(0.4)
        assert await store.recent("log", 100) == ["3", "4", "5", "6"]
        await asyncio.sleep(0.7)
        assert await store.recent("log", 100) == []

    run(check)


def test_a_deleted_key_is_gone_and_a_replayed_delete_deletes(run: Callable[[Check], None]) -> None:
    async def check(store: StateStore) -> None:
        await store.set_indexed("kept", "v", ttl_s=60, index="ix", max_len=4)
        await store.delete("kept")
        await store.delete("never-set")  # nothing to delete is no error
        assert await store.get("kept") is None
        if isinstance(store, RedisStore):  # a delete kept through an outage, replayed in order
            await store.set("replayed", "v")
            applied = await store.apply([Write("delete", "replayed", "")])
            assert applied.rejected == 0 and not applied.unwritten
            assert await store.get("replayed") is None

    run(check)
