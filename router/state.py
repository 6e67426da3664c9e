"""Shared state: Redis when several replicas run, else a bounded in-process store with the same behaviour."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import OrderedDict


class StateStore(ABC):
    @abstractmethod
    async def get(self, key: str) -> str | None: ...

    @abstractmethod
    async def set(self, key: str, value: str, ttl_s: float | None = None) -> None: ...

    async def close(self) -> None:
        return None


class MemoryStore(StateStore):
    """Least-recently-used eviction beyond `max_entries`, so memory stays bounded."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._data: OrderedDict[str, tuple[str, float | None]] = OrderedDict()
        self.max_entries = max_entries

    async def get(self, key: str) -> str | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        value, expires = entry
        if expires is not None and time.monotonic() >= expires:
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return value

    async def set(self, key: str, value: str, ttl_s: float | None = None) -> None:
        self._data[key] = (value, None if ttl_s is None else time.monotonic() + ttl_s)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)


class RedisStore(StateStore):
    def __init__(self, url: str, prefix: str = "confidence-router:") -> None:
        import redis.asyncio as redis

        self._redis = redis.Redis.from_url(url, decode_responses=True)
        self.prefix = prefix

    async def ping(self) -> None:
        await self._redis.ping()

    async def get(self, key: str) -> str | None:
        value = await self._redis.get(self.prefix + key)
        return None if value is None else str(value)

    async def set(self, key: str, value: str, ttl_s: float | None = None) -> None:
        await self._redis.set(self.prefix + key, value, px=None if ttl_s is None else int(ttl_s * 1000))

    async def close(self) -> None:
        await self._redis.aclose()


def open_store(redis_url: str | None) -> StateStore:
    return RedisStore(redis_url) if redis_url else MemoryStore()
