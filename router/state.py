"""Shared state: Redis when several replicas run, else a bounded in-process store with the same behaviour.

Two kinds of entry: keys with an optional time to live, and bounded lists (rolling windows) that keep only
their newest `max_len` values, so every structure here has bounded retention.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import OrderedDict, deque


class StateStore(ABC):
    @abstractmethod
    async def get(self, key: str) -> str | None: ...

    @abstractmethod
    async def set(self, key: str, value: str, ttl_s: float | None = None) -> None: ...

    @abstractmethod
    async def set_if_absent(self, key: str, value: str, ttl_s: float | None = None) -> bool:
        """Set only when the key holds nothing; True when this call set it (one winner across replicas)."""

    @abstractmethod
    async def push(self, key: str, value: str, max_len: int) -> None:
        """Append to a rolling window, dropping the oldest values beyond `max_len`."""

    @abstractmethod
    async def recent(self, key: str, count: int) -> list[str]:
        """The newest `count` values of a rolling window, oldest first."""

    async def close(self) -> None:
        return None


class MemoryStore(StateStore):
    """Least-recently-used eviction beyond `max_entries`, so memory stays bounded."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._data: OrderedDict[str, tuple[str, float | None]] = OrderedDict()
        self._windows: dict[str, deque[str]] = {}
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

    async def set_if_absent(self, key: str, value: str, ttl_s: float | None = None) -> bool:
        if await self.get(key) is not None:
            return False
        await self.set(key, value, ttl_s)
        return True

    async def push(self, key: str, value: str, max_len: int) -> None:
        window = self._windows.get(key)
        if window is None or window.maxlen != max_len:
            window = self._windows[key] = deque(window or (), maxlen=max_len)
        window.append(value)

    async def recent(self, key: str, count: int) -> list[str]:
        window = self._windows.get(key, deque())
        return list(window)[-count:] if count > 0 else []


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

    async def set_if_absent(self, key: str, value: str, ttl_s: float | None = None) -> bool:
        px = None if ttl_s is None else int(ttl_s * 1000)
        return bool(await self._redis.set(self.prefix + key, value, px=px, nx=True))

    async def push(self, key: str, value: str, max_len: int) -> None:
        # One transaction, so a concurrent reader never sees the window past its bound.
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.rpush(self.prefix + key, value)
            pipe.ltrim(self.prefix + key, -max_len, -1)
            await pipe.execute()

    async def recent(self, key: str, count: int) -> list[str]:
        if count <= 0:
            return []
        return [str(v) for v in await self._redis.lrange(self.prefix + key, -count, -1)]

    async def close(self) -> None:
        await self._redis.aclose()


def open_store(redis_url: str | None) -> StateStore:
    return RedisStore(redis_url) if redis_url else MemoryStore()
