"""The store on Redis, on whichever topology the URL names: one operation, one key (router/state/__init__.py).

It fails as Redis does; a `ResilientStore` (router/state/resilient.py) keeps a replica serving without it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from router.state.base import StateStore, StoreHealth, Write, index_entry
from router.state.client import redis_client
from router.state.outage import is_outage
from router.state.url import parse_redis_url

REDIS_CONNECT_TIMEOUT_S = 0.5
REDIS_SOCKET_TIMEOUT_S = 1.0
"""A hung (not refused) Redis stalls a command for at most this long; the ResilientStore then stops asking
it until it answers a probe again."""


@dataclass(frozen=True)
class Applied:
    """What `RedisStore.apply` did with a batch of writes."""

    rejected: int
    """Writes Redis refused as wrong (programming errors): retrying would not help."""
    unwritten: list[Write]
    """Writes Redis could not take now (an outage), in order: for the next try."""
    outage: BaseException | None


_PUSH = """
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[2]), -1)
"""
_APPEND = """
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[2]), -1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
"""
_ENTER = """
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local over = redis.call('LLEN', KEYS[1]) - tonumber(ARGV[2])
if over <= 0 then return {} end
local gone = redis.call('LRANGE', KEYS[1], 0, over - 1)
redis.call('LTRIM', KEYS[1], over, -1)
return gone
"""
"""An index's entry in, and the entries pushed out returned: their keys are in other slots of a cluster, so
they are deleted by a command of their own (`_forget`). Sent with EVAL in a pipeline beside its key's SET
(only kept decisions take this path: a few hundred bytes of script each)."""


class RedisStore(StateStore):
    def __init__(
        self,
        url: str,
        prefix: str = "confidence-router:",
        connect_timeout_s: float = REDIS_CONNECT_TIMEOUT_S,
        timeout_s: float = REDIS_SOCKET_TIMEOUT_S,
    ) -> None:
        self.topology = parse_redis_url(url).topology
        # No retries inside the client: one failed command is the signal to degrade, not to wait.
        self._redis = redis_client(
            url,
            decode_responses=True,
            socket_connect_timeout=connect_timeout_s,
            socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        # One script, so that a concurrent reader never sees the window past its bound, on every topology.
        self._push = self._redis.register_script(_PUSH)
        self._append = self._redis.register_script(_APPEND)
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

    async def delete(self, key: str) -> None:
        await self._redis.delete(self.prefix + key)

    async def push(self, key: str, value: str, max_len: int) -> None:
        await self._push([self.prefix + key], [value, max_len])

    async def append(self, key: str, value: str, max_len: int, ttl_s: float) -> None:
        await self._append([self.prefix + key], [value, max_len, int(ttl_s * 1000)])

    async def set_indexed(
        self, key: str, value: str, ttl_s: float, index: str, max_len: int, owns: tuple[str, ...] = ()
    ) -> None:
        px, entry = int(ttl_s * 1000), index_entry(key, owns)
        async with self._redis.pipeline(transaction=self.topology != "cluster") as pipe:
            pipe.set(self.prefix + key, value, px=px)
            pipe.eval(_ENTER, 1, self.prefix + index, entry, max_len, px)
            _, gone = await pipe.execute()
        await self._forget(gone)

    async def _forget(self, entries: Sequence[str]) -> None:
        """Delete the keys of index entries that were pushed out. Best effort: a failure leaves them to
        their own TTL, and the write that pushed them out is done (a replay would enter it twice)."""
        keys = [self.prefix + key for entry in entries for key in str(entry).split()]
        if keys:
            try:
                await self._redis.delete(*keys)
            except Exception as exc:
                if not is_outage(exc):
                    raise

    async def recent(self, key: str, count: int) -> list[str]:
        if count <= 0:
            return []
        return [str(v) for v in await self._redis.lrange(self.prefix + key, -count, -1)]

    async def apply(self, writes: Sequence[Write]) -> Applied:
        """Apply `writes` in order: one MULTI/EXEC on one server; on a cluster, whose keys live on several
        nodes, one pipeline that keeps each node's commands in order, so that when a node is away the
        writes the others took are done and only that node's wait for the next try. A write whose time to
        live ran out while it waited is applied as what it would be now: gone."""
        now, queued = time.monotonic(), []  # how many commands each write queued
        try:
            async with self._redis.pipeline(transaction=self.topology != "cluster") as pipe:
                for write in writes:
                    key = self.prefix + write.key
                    px = None if write.expires_at is None else int((write.expires_at - now) * 1000)
                    queued.append(1)
                    if write.op == "push":
                        pipe.eval(_PUSH, 1, key, write.value, write.max_len)
                    elif write.op == "increment":
                        pipe.incrbyfloat(key, float(write.value))
                    elif write.op == "delete":
                        pipe.delete(key)
                    elif px is not None and px <= 0:
                        if write.op == "set":
                            pipe.delete(key)
                        queued[-1] = int(write.op == "set")
                    elif write.op == "append":
                        pipe.eval(_APPEND, 1, key, write.value, write.max_len, px)
                    elif write.op == "set_indexed":
                        pipe.set(key, write.value, px=px)
                        pipe.eval(_ENTER, 1, self.prefix + write.index, write.entry, write.max_len, px)
                        queued[-1] = 2
                    else:
                        pipe.set(key, write.value, px=px, nx=write.op == "set_if_absent")
                answers = iter(await pipe.execute(raise_on_error=False))
        except Exception as exc:
            if not is_outage(exc):
                raise
            return Applied(0, list(writes), exc)
        rejected, unwritten, outage, gone = 0, [], None, []
        for write, sent in zip(writes, queued, strict=True):
            replies = [next(answers) for _ in range(sent)]
            failed = [reply for reply in replies if isinstance(reply, Exception)]
            if any(is_outage(reply) for reply in failed):
                unwritten.append(write)
                outage = outage or next(reply for reply in failed if is_outage(reply))
            elif failed:
                rejected += 1
            elif write.op == "set_indexed":
                gone += replies[1]
        await self._forget(gone)
        return Applied(rejected, unwritten, outage)

    async def close(self) -> None:
        await self._redis.aclose()
