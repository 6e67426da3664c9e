"""Shared state: Redis when several replicas run, else a bounded in-process store with the same behaviour.

Two kinds of entry: keys with an optional time to live, and bounded lists (rolling windows) that keep only
their newest `max_len` values, so every structure here has bounded retention.

`open_store` wraps Redis in a `ResilientStore` (router/resilient_store.py), so that Redis going away
degrades a replica to its local state instead of failing its requests.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

REDIS_CONNECT_TIMEOUT_S = 0.5
REDIS_SOCKET_TIMEOUT_S = 1.0
"""A hung (not refused) Redis stalls a command for at most this long; the ResilientStore then stops asking
it until it answers a probe again."""


class StoreUnavailable(RuntimeError):
    """The shared store is unreachable and this replica cannot keep the write for later: it may be lost."""


@dataclass(frozen=True)
class StoreHealth:
    mode: Literal["ok", "degraded", "memory"]
    outages: int = 0
    pending_writes: int = 0
    dropped_writes: int = 0

    @property
    def up(self) -> bool:
        return self.mode != "degraded"


@dataclass(frozen=True)
class Write:
    """A write kept for replay. `expires_at` is on the monotonic clock, so a replayed TTL is what is left."""

    op: Literal["set", "set_if_absent", "push"]
    key: str
    value: str
    expires_at: float | None = None
    max_len: int = 0


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

    def health(self) -> StoreHealth:
        return StoreHealth("memory")

    def check_writable(self, writes: int) -> None:
        """Raise StoreUnavailable when `writes` more writes could not all be kept (never, for most stores)."""
        return None

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

    def load_window(self, key: str, values: list[str]) -> None:
        """Replace a window's values (a copy of the shared window), keeping its bound when it has one."""
        known = self._windows.get(key)
        bound = known.maxlen if known is not None and known.maxlen else max(len(values), 1)
        self._windows[key] = deque(values, maxlen=bound)

    def window_size(self, key: str) -> int:
        return len(self._windows.get(key, ()))


class RedisStore(StateStore):
    def __init__(
        self,
        url: str,
        prefix: str = "confidence-router:",
        connect_timeout_s: float = REDIS_CONNECT_TIMEOUT_S,
        timeout_s: float = REDIS_SOCKET_TIMEOUT_S,
    ) -> None:
        import redis.asyncio as redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # No retries inside the client: one failed command is the signal to degrade, not to wait.
        self._redis = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=connect_timeout_s,
            socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self.prefix = prefix

    def health(self) -> StoreHealth:
        return StoreHealth("ok")

    @property
    def client(self) -> object:
        """The redis.asyncio client, for what the store's operations do not cover (scripts)."""
        return self._redis

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

    async def apply(self, writes: Sequence[Write]) -> int:
        """Apply `writes` in order in one MULTI/EXEC; returns how many Redis rejected (programming errors).
        A write whose time to live ran out while it waited is applied as what it would be now: gone."""
        now, commands = time.monotonic(), []  # commands queued per write
        async with self._redis.pipeline(transaction=True) as pipe:
            for write in writes:
                key = self.prefix + write.key
                px = None if write.expires_at is None else int((write.expires_at - now) * 1000)
                if write.op == "push":
                    pipe.rpush(key, write.value)
                    pipe.ltrim(key, -write.max_len, -1)
                    commands.append(2)
                elif px is not None and px <= 0:
                    if write.op == "set":
                        pipe.delete(key)
                    commands.append(int(write.op == "set"))
                else:
                    pipe.set(key, write.value, px=px, nx=write.op == "set_if_absent")
                    commands.append(1)
            results = iter(await pipe.execute(raise_on_error=False))
        failed = [[isinstance(next(results), Exception) for _ in range(n)] for n in commands]
        return sum(any(write) for write in failed)

    async def close(self) -> None:
        await self._redis.aclose()


def open_store(redis_url: str | None) -> StateStore:
    if not redis_url:
        return MemoryStore()
    from router.resilient_store import ResilientStore

    return ResilientStore(RedisStore(redis_url))
