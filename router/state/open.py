"""The store a --redis-url asks for: in-process without one; else Redis, in a `ResilientStore`, so that
Redis going away degrades a replica to its local state instead of failing its requests."""

from __future__ import annotations

import os

from router.state.base import StateStore
from router.state.memory import MemoryStore
from router.state.redis import RedisStore
from router.state.resilient import PROBE_INTERVAL_S, ResilientStore

PROBE_ENV = "ROUTER_STORE_PROBE_S"
"""How often a replica whose Redis is away asks it again (seconds; router/state/resilient.py's default
when unset)."""


def open_store(redis_url: str | None) -> StateStore:
    """ValueError, in one line, for a URL or a PROBE_ENV it cannot use."""
    if not redis_url:
        return MemoryStore()
    probe = os.environ.get(PROBE_ENV, "")
    try:
        probe_interval_s = float(probe) if probe else PROBE_INTERVAL_S
    except ValueError:
        probe_interval_s = 0.0
    if not probe_interval_s > 0:
        raise ValueError(f"{PROBE_ENV}={probe!r}: give a number of seconds above 0")
    return ResilientStore(RedisStore(redis_url), probe_interval_s=probe_interval_s)
