"""Shared state: Redis when several replicas run, else a bounded in-process store with the same behaviour.

Two kinds of entry: keys with an optional time to live, and bounded lists (rolling windows) that keep only
their newest `max_len` values, so every structure here has bounded retention.

Redis is one server, a Redis Cluster or a Sentinel-managed master, as the URL says (`REDIS_URL_FORMS`,
docs/operations.md). Every operation of the store touches one key, and a multi-key script elsewhere
(router/access/) hash-tags its keys into one slot, so the same commands run on every topology.

`open_store` wraps Redis in a `ResilientStore` (router/resilient_store.py), so that Redis going away
degrades a replica to its local state instead of failing its requests.
"""

from __future__ import annotations

import os
import time
import urllib.parse
from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import redis.exceptions
from redis.asyncio.cluster import ClusterNode, RedisCluster

REDIS_CONNECT_TIMEOUT_S = 0.5
REDIS_SOCKET_TIMEOUT_S = 1.0
"""A hung (not refused) Redis stalls a command for at most this long; the ResilientStore then stops asking
it until it answers a probe again."""

REDIS_URL_FORMS = (
    "redis://[[user]:password@]host[:port][/db] (rediss:// with TLS, unix:///path), "
    "redis+cluster://[[user]:password@]host:port[,host:port...] (rediss+cluster:// with TLS), "
    "redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]"
)
_DEFAULT_PORT = {"redis+cluster": 6379, "rediss+cluster": 6379, "redis+sentinel": 26379}

# What makes Redis unable to take the store's operations for now, as an outage does: it is unreachable
# (TimeoutError, asyncio's too on 3.11, and ConnectionRefusedError are OSErrors), still loading its AOF
# (BusyLoadingError, a redis ConnectionError), a replica after a failover (READONLY), at maxmemory (OOM),
# without a master (MASTERDOWN; MasterNotFoundError from a Sentinel is a ConnectionError), a cluster
# with slots no node serves (CLUSTERDOWN, SlotNotCoveredError) or redirecting for too long (ClusterError),
# or a transaction refused for one of those (EXECABORT); or it refuses this client: a wrong password
# (AuthenticationError, a ConnectionError), an ACL without the command (NOPERM), protected mode (DENIED).
# Those last persist until an operator mends them, but the answer is the same: serve without Redis, say so.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.NoPermissionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ClusterError,  # ClusterDownError and MasterDownError too
    redis.exceptions.SlotNotCoveredError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ExecAbortError,
    OSError,
)


def is_outage(exc: BaseException) -> bool:
    """True for a failure that says Redis cannot take commands now; False for a programming error (a wrong
    type, a cross-slot command), which a retry would not mend."""
    if isinstance(exc, CONNECTION_ERRORS):
        return True
    if isinstance(exc, redis.exceptions.ResponseError) and str(exc).startswith("DENIED"):
        return True
    # The cluster client's "cannot be connected" carries the connection failure behind it as its cause.
    cause = exc.__cause__
    return isinstance(exc, redis.exceptions.RedisClusterException) and cause is not None and is_outage(cause)


class RedisUrlError(ValueError):
    """A Redis URL the router cannot use: one line naming the URL (its password hidden) and the problem."""

    def __init__(self, url: str, problem: str) -> None:
        super().__init__(f"redis URL '{_hide_password(url)}': {problem}; the forms are {REDIS_URL_FORMS}")


@dataclass(frozen=True)
class RedisTarget:
    """What a Redis URL names."""

    topology: Literal["single", "cluster", "sentinel"]
    nodes: tuple[tuple[str, int], ...] = ()
    """Cluster: the startup nodes; Sentinel: the Sentinels. A single server's URL is read by redis-py."""
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False


def parse_redis_url(url: str) -> RedisTarget:
    scheme, found, _ = url.partition("://")
    scheme = scheme.lower()
    if not found:
        raise RedisUrlError(url, "no scheme")
    if scheme in ("redis", "rediss", "unix"):
        from redis.asyncio.connection import parse_url

        try:
            parse_url(url)
        except ValueError as exc:
            raise RedisUrlError(url, str(exc)) from exc
        return RedisTarget("single")
    if scheme not in _DEFAULT_PORT:
        raise RedisUrlError(url, f"unknown scheme '{scheme}'")
    parts = urllib.parse.urlsplit(url)
    if parts.query or parts.fragment:
        raise RedisUrlError(url, f"{scheme}:// takes no ?options or #fragment")
    credentials, _, hosts = parts.netloc.rpartition("@")
    user, _, secret = credentials.partition(":")
    nodes = tuple(_host_port(url, host, _DEFAULT_PORT[scheme]) for host in hosts.split(","))
    path = [urllib.parse.unquote(p) for p in parts.path.split("/") if p]
    username, password = urllib.parse.unquote(user) or None, urllib.parse.unquote(secret) or None
    if scheme.endswith("+cluster"):
        if path:
            raise RedisUrlError(url, "a cluster has one database: give no /path")
        tls = scheme.startswith("rediss")
        return RedisTarget("cluster", nodes, username=username, password=password, tls=tls)
    if not 1 <= len(path) <= 2:
        raise RedisUrlError(url, "give the Sentinel's service name as the path: /service or /service/db")
    if len(path) == 2 and not path[1].isdigit():
        raise RedisUrlError(url, f"database '{path[1]}' is not a number")
    db = int(path[1]) if len(path) == 2 else 0
    return RedisTarget("sentinel", nodes, path[0], db, username=username, password=password)


def _host_port(url: str, text: str, default_port: int) -> tuple[str, int]:
    host, port = text, str(default_port)
    if text.startswith("["):  # [IPv6]:port
        host, _, rest = text[1:].partition("]")
        if rest:
            port = rest.removeprefix(":")
    elif ":" in text:
        host, _, port = text.rpartition(":")
    if not host:
        raise RedisUrlError(url, f"host '{text}' has no name")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise RedisUrlError(url, f"host '{text}': the port is not a number from 1 to 65535")
    return host, int(port)


def _hide_password(url: str) -> str:
    scheme, found, rest = url.partition("://")
    credentials, at, hosts = rest.rpartition("@")
    if not found or not at or ":" not in credentials:
        return url
    return f"{scheme}://{credentials.partition(':')[0]}:***@{hosts}"


def redis_client(url: str, **options: Any) -> Any:
    """The redis.asyncio client for `url`: a plain client, a cluster client, or a client of the master a
    Sentinel names (asked again on every new connection, so a failover is followed). `options` apply to
    every connection: timeouts, `decode_responses`, `retry`. RedisUrlError for a URL it cannot use."""
    target = parse_redis_url(url)
    if target.topology == "single":
        import redis.asyncio

        return redis.asyncio.Redis.from_url(url, **options)
    if target.topology == "cluster":
        # Without full coverage the client still starts when a node is away; commands for the slots that
        # node serves fail (an outage), the rest of the cluster answers.
        return _InitializedFirst(
            startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
            require_full_coverage=False,
            ssl=target.tls,
            username=target.username,
            password=target.password,
            **options,
        )
    from redis.asyncio.sentinel import Sentinel

    timeouts = {k: v for k, v in options.items() if k.startswith("socket_")}
    sentinel = Sentinel(
        list(target.nodes),
        sentinel_kwargs=timeouts,
        username=target.username,
        password=target.password,
        **options,
    )
    return sentinel.master_for(target.service, db=target.db)


class _InitializedFirst(RedisCluster):
    """redis-py's asyncio cluster client (8.1) breaks connections when several commands start at once on
    a client that has not (or no longer) read the cluster's layout: every command here waits for that
    read first (`initialize` takes a lock, and returns at once when the layout is known)."""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        await self.initialize()
        return await super().execute_command(*args, **kwargs)


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
    """A write kept for replay. `expires_at` is on the monotonic clock, so a replayed TTL is what is left.
    An `increment` adds `value` (a float) to a counter (INCRBYFLOAT)."""

    op: Literal["set", "set_if_absent", "push", "increment"]
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


class RedisStore(StateStore):
    def __init__(
        self,
        url: str,
        prefix: str = "confidence-router:",
        connect_timeout_s: float = REDIS_CONNECT_TIMEOUT_S,
        timeout_s: float = REDIS_SOCKET_TIMEOUT_S,
    ) -> None:
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

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
        await self._push([self.prefix + key], [value, max_len])

    async def recent(self, key: str, count: int) -> list[str]:
        if count <= 0:
            return []
        return [str(v) for v in await self._redis.lrange(self.prefix + key, -count, -1)]

    async def apply(self, writes: Sequence[Write]) -> Applied:
        """Apply `writes` in order: one MULTI/EXEC on one server; on a cluster, whose keys live on several
        nodes, one pipeline that keeps each node's commands in order, so that when a node is away the
        writes the others took are done and only that node's wait for the next try. A write whose time to
        live ran out while it waited is applied as what it would be now: gone."""
        now, queued = time.monotonic(), []  # whether each write queued a command
        try:
            async with self._redis.pipeline(transaction=self.topology != "cluster") as pipe:
                for write in writes:
                    key = self.prefix + write.key
                    px = None if write.expires_at is None else int((write.expires_at - now) * 1000)
                    queued.append(True)
                    if write.op == "push":
                        pipe.eval(_PUSH, 1, key, write.value, write.max_len)
                    elif write.op == "increment":
                        pipe.incrbyfloat(key, float(write.value))
                    elif px is not None and px <= 0:
                        if write.op == "set":
                            pipe.delete(key)
                        queued[-1] = write.op == "set"
                    else:
                        pipe.set(key, write.value, px=px, nx=write.op == "set_if_absent")
                answers = iter(await pipe.execute(raise_on_error=False))
        except Exception as exc:
            if not is_outage(exc):
                raise
            return Applied(0, list(writes), exc)
        rejected, unwritten, outage = 0, [], None
        for write, sent in zip(writes, queued, strict=True):
            answer = next(answers) if sent else None
            if isinstance(answer, Exception) and is_outage(answer):
                unwritten.append(write)
                outage = outage or answer
            elif isinstance(answer, Exception):
                rejected += 1
        return Applied(rejected, unwritten, outage)

    async def close(self) -> None:
        await self._redis.aclose()


PROBE_ENV = "ROUTER_STORE_PROBE_S"
"""How often a replica whose Redis is away asks it again (seconds; router/resilient_store.py's default
when unset)."""


def open_store(redis_url: str | None) -> StateStore:
    """ValueError, in one line, for a URL or a PROBE_ENV it cannot use."""
    if not redis_url:
        return MemoryStore()
    from router.resilient_store import PROBE_INTERVAL_S, ResilientStore

    probe = os.environ.get(PROBE_ENV, "")
    try:
        probe_interval_s = float(probe) if probe else PROBE_INTERVAL_S
    except ValueError:
        probe_interval_s = 0.0
    if not probe_interval_s > 0:
        raise ValueError(f"{PROBE_ENV}={probe!r}: give a number of seconds above 0")
    return ResilientStore(RedisStore(redis_url), probe_interval_s=probe_interval_s)
