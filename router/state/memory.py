"""The in-process store: the whole state of a single replica, and the local mirror of a `ResilientStore`."""

from __future__ import annotations

import time
from collections import OrderedDict, deque

from router.state.base import StateStore, index_entry


class MemoryStore(StateStore):
    """Least-recently-used eviction beyond `max_entries`, so memory stays bounded; an index holds at most as
    many entries (its keys beyond that are gone anyway)."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._data: OrderedDict[str, tuple[str, float | None]] = OrderedDict()
        self._windows: dict[str, deque[str]] = {}
        self._indexes: dict[str, deque[str]] = {}
        self._logs_expire: dict[str, float] = {}
        """A log's expiry (monotonic clock); its values are in `_windows`."""
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

    async def delete(self, key: str) -> None:
        self._data.pop(key, None)

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

    async def append(self, key: str, value: str, max_len: int, ttl_s: float) -> None:
        self._expire_log(key)
        await self.push(key, value, max_len)
        self._logs_expire[key] = time.monotonic() + ttl_s

    def _expire_log(self, key: str) -> None:
        expires = self._logs_expire.get(key)
        if expires is not None and time.monotonic() >= expires:
            del self._logs_expire[key]
            self._windows.pop(key, None)

    async def set_indexed(
        self, key: str, value: str, ttl_s: float, index: str, max_len: int, owns: tuple[str, ...] = ()
    ) -> None:
        await self.set(key, value, ttl_s)
        entries = self._indexes.setdefault(index, deque())
        entries.append(index_entry(key, owns))
        while len(entries) > min(max_len, self.max_entries):
            for gone in entries.popleft().split():
                self._data.pop(gone, None)

    async def recent(self, key: str, count: int) -> list[str]:
        self._expire_log(key)
        window = self._windows.get(key, deque())
        return list(window)[-count:] if count > 0 else []

    def load_window(self, key: str, values: list[str]) -> None:
        """Replace a window's values (a copy of the shared window), keeping its bound when it has one."""
        known = self._windows.get(key)
        bound = known.maxlen if known is not None and known.maxlen else max(len(values), 1)
        self._windows[key] = deque(values, maxlen=bound)

    def window_size(self, key: str) -> int:
        return len(self._windows.get(key, ()))
