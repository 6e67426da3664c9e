"""The store's contract, which every store keeps alike: the in-process one, Redis, and Redis that may go away.

Two kinds of entry: keys with an optional time to live, and bounded lists (rolling windows) that keep only
their newest `max_len` values, so every structure here has bounded retention. An index (`set_indexed`) is a
bounded list of keys: a key pushed out of it is deleted, so it bounds how many such keys exist. A log
(`append`) is a bounded list that also expires, written on the request path and read by no replica (captured
traffic, which `router traffic export` reads from Redis).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal


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
    An `increment` adds `value` (a float) to a counter (INCRBYFLOAT); a `set_indexed` also enters `entry` in
    `index`; an `append` is a `push` whose list expires at `expires_at`; a `delete` removes `key`."""

    op: Literal["set", "set_if_absent", "push", "increment", "set_indexed", "append", "delete"]
    key: str
    value: str
    expires_at: float | None = None
    max_len: int = 0
    index: str = ""
    entry: str = ""


def index_entry(key: str, owns: tuple[str, ...]) -> str:
    """An index's entry: the keys it deletes when it is pushed out, space-separated (keys hold none)."""
    return " ".join((key, *owns))


class StateStore(ABC):
    @abstractmethod
    async def get(self, key: str) -> str | None: ...

    @abstractmethod
    async def set(self, key: str, value: str, ttl_s: float | None = None) -> None: ...

    @abstractmethod
    async def set_if_absent(self, key: str, value: str, ttl_s: float | None = None) -> bool:
        """Set only when the key holds nothing; True when this call set it (one winner across replicas)."""

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Remove a key (an index's entry for it stays, and deletes nothing when it is pushed out)."""

    @abstractmethod
    async def push(self, key: str, value: str, max_len: int) -> None:
        """Append to a rolling window, dropping the oldest values beyond `max_len`."""

    @abstractmethod
    async def append(self, key: str, value: str, max_len: int, ttl_s: float) -> None:
        """Append to a log: a rolling window of `max_len` values (read with `recent`) that expires `ttl_s`
        after its newest value. Nothing on the request path reads a log back, so a `ResilientStore` keeps
        no local copy of it, only the writes it still owes Redis."""

    @abstractmethod
    async def set_indexed(
        self, key: str, value: str, ttl_s: float, index: str, max_len: int, owns: tuple[str, ...] = ()
    ) -> None:
        """Set `key` for `ttl_s` and enter it in `index`, a list of the newest `max_len` entries: an entry
        pushed out takes its key with it, and the keys it `owns` (written later, if at all). The index
        itself expires `ttl_s` after its newest entry. One write: replayed whole after an outage."""

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
