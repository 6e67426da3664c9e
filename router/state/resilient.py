"""Redis that is allowed to go away: a replica keeps serving from its own recent state and catches up later.

Healthy, every operation goes to Redis, and writes are also applied to a bounded local `MemoryStore`
mirror (write-through; `MIRROR_ENTRIES` keys, LRU; each window as bounded as in Redis; not logs, which no
replica reads), and a full read of a shared window refreshes the mirror's copy of it. So during an outage
the replica still knows its own recent decisions, cached scores, feedback markers and the last windows it
read.

The first operation that fails because Redis cannot take it now (refused, reset, timed out, read-only after
a failover, out of memory, a cluster slot no node serves: `router.state.is_outage`; never a programming
error such as WRONGTYPE) makes the store degraded: reads come from the mirror, writes
go to the mirror (but for logs) and to an ordered replay buffer of at most `MAX_PENDING` writes. No request
waits on Redis then: one background task PINGs it every `PROBE_INTERVAL_S`, and when it answers, replays
the buffer in order (chunks of `REPLAY_CHUNK`, each one MULTI/EXEC, or on a cluster one pipeline whose
writes for a node still away wait for the next try; TTLs shortened by the time spent waiting) and only then
turns healthy again. Requests during the replay keep taking the degraded path, so their writes queue behind
the replayed ones. The client's timeouts (`REDIS_CONNECT_TIMEOUT_S`, `REDIS_SOCKET_TIMEOUT_S`) bound what
a hung Redis costs the requests in flight when it hangs. One WARNING line per outage, one INFO line when
it ends (how long, how many writes replayed); keys are never logged (they hold prompt hashes and ids).

When the buffer is full a write raises `StoreUnavailable` (and is kept in the mirror anyway, except a
`set_if_absent`, which is not applied so that a retry is not mistaken for a repeat). The request path
swallows it (the decision log, the score cache: an answer is never dropped for the store's sake); feedback
checks for room first and answers 503, so that nothing is acknowledged that could be lost. Callers that
talk to the Redis client directly keep their counter increments here too (`keep_increment`: spend
debited while Redis was away, router/access/limits.py), replayed in order with the rest.

`close` (the process ending) first writes what is still kept: it tries Redis at once and then at every
probe interval, for at most `FLUSH_TIMEOUT_S`, and logs what was written or, when Redis stayed away, how
many writes are lost. Within the bound, nothing acknowledged is lost unless Redis is away throughout that.

What an outage cannot give, and what a Redis restart without persistence loses: docs/operations.md,
"When Redis goes away".
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque

import redis.exceptions

from router.state.base import StateStore, StoreHealth, StoreUnavailable, Write, index_entry
from router.state.memory import MemoryStore
from router.state.outage import is_outage
from router.state.redis import Applied, RedisStore

log = logging.getLogger("router")

MAX_PENDING = 10_000
"""Writes kept for replay during an outage (each a few hundred bytes, but a captured row, which holds its
conversation): a request costs one to four (its traffic entry, a cached score, its decision when it is
kept, its row when `capture:` samples it), so eight minutes or more of a replica serving 5 requests/s."""
MIRROR_ENTRIES = 20_000
PROBE_INTERVAL_S = 0.5
REPLAY_CHUNK = 500
FLUSH_TIMEOUT_S = 3.0
"""How long closing the store may try to write what it still keeps (the chart's
terminationGracePeriodSeconds covers it after the requests' grace period, docs/operations.md)."""


class ResilientStore(StateStore):
    def __init__(
        self,
        remote: RedisStore,
        *,
        max_pending: int = MAX_PENDING,
        mirror_entries: int = MIRROR_ENTRIES,
        probe_interval_s: float = PROBE_INTERVAL_S,
    ) -> None:
        self.remote, self.mirror = remote, MemoryStore(mirror_entries)
        self.max_pending, self.probe_interval_s = max_pending, probe_interval_s
        self._pending: deque[Write] = deque()
        self._up = True
        self.outages = self.dropped = 0
        self._down_since = 0.0
        self._replayed = 0
        self._full_reported = False
        self._probe: asyncio.Task[None] | None = None

    def health(self) -> StoreHealth:
        return StoreHealth("ok" if self._up else "degraded", self.outages, len(self._pending), self.dropped)

    def check_writable(self, writes: int) -> None:
        if not self._up and len(self._pending) + writes > self.max_pending:
            self._refuse(writes)

    async def get(self, key: str) -> str | None:
        if self._up:
            try:
                return await self.remote.get(key)
            except Exception as exc:
                self._went_down(exc)
        return await self.mirror.get(key)

    async def recent(self, key: str, count: int) -> list[str]:
        if self._up:
            try:
                values = await self.remote.recent(key, count)
            except Exception as exc:
                self._went_down(exc)
            else:
                # Keep the shared window for an outage, when this read saw all of it, or more of it than
                # the mirror holds (the mirror alone knows only this replica's writes).
                if len(values) < count or count >= self.mirror.window_size(key):
                    self.mirror.load_window(key, values)
                return values
        return await self.mirror.recent(key, count)

    async def set(self, key: str, value: str, ttl_s: float | None = None) -> None:
        if self._up:
            try:
                await self.remote.set(key, value, ttl_s)
            except Exception as exc:
                self._went_down(exc)
            else:
                await self.mirror.set(key, value, ttl_s)
                return
        await self.mirror.set(key, value, ttl_s)
        self._keep(Write("set", key, value, _expiry(ttl_s)))

    async def delete(self, key: str) -> None:
        await self.mirror.delete(key)
        if self._up:
            try:
                await self.remote.delete(key)
            except Exception as exc:
                self._went_down(exc)
            else:
                return
        self._keep(Write("delete", key, ""))

    async def set_if_absent(self, key: str, value: str, ttl_s: float | None = None) -> bool:
        if self._up:
            try:
                won = await self.remote.set_if_absent(key, value, ttl_s)
            except Exception as exc:
                self._went_down(exc)
            else:
                if won:
                    await self.mirror.set(key, value, ttl_s)
                return won
        self.check_writable(1)
        won = await self.mirror.set_if_absent(key, value, ttl_s)
        if won:
            self._keep(Write("set_if_absent", key, value, _expiry(ttl_s)))
        return won

    async def push(self, key: str, value: str, max_len: int) -> None:
        if self._up:
            try:
                await self.remote.push(key, value, max_len)
            except Exception as exc:
                self._went_down(exc)
            else:
                await self.mirror.push(key, value, max_len)
                return
        await self.mirror.push(key, value, max_len)
        self._keep(Write("push", key, value, max_len=max_len))

    async def append(self, key: str, value: str, max_len: int, ttl_s: float) -> None:
        # No mirror copy: nothing here reads a log back, and a tenant's log may hold megabytes.
        if self._up:
            try:
                await self.remote.append(key, value, max_len, ttl_s)
            except Exception as exc:
                self._went_down(exc)
            else:
                return
        self._keep(Write("append", key, value, _expiry(ttl_s), max_len))

    async def set_indexed(
        self, key: str, value: str, ttl_s: float, index: str, max_len: int, owns: tuple[str, ...] = ()
    ) -> None:
        # The mirror keeps the key alone: its own LRU bounds it, and an index per tenant would not be.
        if self._up:
            try:
                await self.remote.set_indexed(key, value, ttl_s, index, max_len, owns)
            except Exception as exc:
                self._went_down(exc)
            else:
                await self.mirror.set(key, value, ttl_s)
                return
        await self.mirror.set(key, value, ttl_s)
        entry = index_entry(key, owns)
        self._keep(Write("set_indexed", key, value, _expiry(ttl_s), max_len, index, entry))

    def keep_increment(self, key: str, amount: float) -> None:
        """For callers that change a counter through the Redis client directly and could not, Redis being
        away: the increment waits with the other writes and is replayed in order. StoreUnavailable when
        the buffer is full."""
        self._keep(Write("increment", key, repr(amount)))

    def _keep(self, write: Write) -> None:
        if len(self._pending) >= self.max_pending:
            self._refuse(1)
        self._pending.append(write)

    def _refuse(self, writes: int) -> None:
        self.dropped += writes
        if not self._full_reported:
            self._full_reported = True
            log.error(
                "state store: the replay buffer is full (%d writes); writes from now on are not kept for "
                "Redis, and feedback is refused with 503 until Redis is back",
                self.max_pending,
            )
        raise StoreUnavailable(f"the state store is unreachable and {self.max_pending} writes wait for it")

    def report_unreachable(self, exc: BaseException) -> None:
        """For callers that talk to the Redis client directly (router/access/limits.py): an outage degrades
        the store as its own failures do; anything else is re-raised."""
        self._went_down(exc)

    @property
    def client(self) -> object:
        return self.remote.client

    def _went_down(self, exc: BaseException) -> None:
        """Degrade on an outage; re-raise anything else (a programming error is no reason to degrade)."""
        if not is_outage(exc):
            raise exc
        if not self._up:
            return
        self._up, self._full_reported = False, False
        self.outages += 1
        self._down_since, self._replayed = time.monotonic(), 0
        # The exception's text names the host and the failure (refused, timed out), never a key.
        log.warning(
            "state store: Redis is unreachable (%s: %s); serving from this replica's local state and "
            "keeping up to %d writes until it answers again",
            type(exc).__name__,
            exc,
            self.max_pending,
        )
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._recover())

    async def _recover(self) -> None:
        reported = False
        while True:
            await asyncio.sleep(self.probe_interval_s)
            try:
                await self._catch_up()
            except Exception as exc:
                # Never let the probe die on anything else either: the store would stay degraded for good.
                if not is_outage(exc) and not reported:
                    log.exception("state store: replaying to Redis failed; trying again")
                    reported = True
                continue
            log.info(
                "state store: Redis is back after %.1f s; %d buffered writes replayed",
                time.monotonic() - self._down_since,
                self._replayed,
            )
            return

    async def _catch_up(self) -> None:
        """PING, replay everything kept, and only then turn healthy (requests meanwhile keep queueing)."""
        await self.remote.ping()
        while self._pending:
            chunk = list(itertools.islice(self._pending, REPLAY_CHUNK))
            try:
                applied = await self.remote.apply(chunk)
            except redis.exceptions.RedisError:  # a whole chunk Redis refuses: drop it, not block on it
                applied = Applied(len(chunk), [], None)
            if applied.rejected:
                self.dropped += applied.rejected
                log.error(
                    "state store: Redis rejected %d replayed writes; they are dropped", applied.rejected
                )
            # Writes made while this chunk was in flight were appended behind it; what Redis could not
            # take yet goes back in front of them, in order.
            for _ in chunk:
                self._pending.popleft()
            self._pending.extendleft(reversed(applied.unwritten))
            self._replayed += len(chunk) - applied.rejected - len(applied.unwritten)
            if applied.outage is not None:
                raise applied.outage
        self._up = True

    async def close(self, flush_timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        """Write what is still kept, trying for at most `flush_timeout_s`, then close the client."""
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        if self._pending:
            await self._flush(flush_timeout_s)
        await self.remote.close()

    async def _flush(self, timeout_s: float) -> None:
        kept, failure = len(self._pending), "it did not answer in time"
        deadline = time.monotonic() + timeout_s
        while self._pending:
            try:
                await asyncio.wait_for(self._catch_up(), deadline - time.monotonic())
            except TimeoutError:
                break
            except Exception as exc:
                failure = f"{type(exc).__name__}: {exc}"
                if time.monotonic() + self.probe_interval_s >= deadline:
                    break
                await asyncio.sleep(self.probe_interval_s)
        if self._pending:
            log.warning(
                "state store: closing with %d buffered writes that Redis did not take (%s); they are lost",
                len(self._pending),
                failure,
            )
        else:
            log.info("state store: %d buffered writes written to Redis before closing", kept)


def _expiry(ttl_s: float | None) -> float | None:
    return None if ttl_s is None else time.monotonic() + ttl_s
