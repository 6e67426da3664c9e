"""Shared state: Redis when several replicas run, else a bounded in-process store with the same behaviour.

Two kinds of entry: keys with an optional time to live, and bounded lists (rolling windows) that keep only
their newest `max_len` values, so every structure here has bounded retention (base.py has the contract).

Redis is one server, a Redis Cluster or a Sentinel-managed master, as the URL says (`REDIS_URL_FORMS`,
docs/operations.md). Every operation of the store touches one key, and a multi-key script elsewhere
(router/access/) hash-tags its keys into one slot, so the same commands run on every topology.

`open_store` wraps Redis in a `ResilientStore` (router/state/resilient.py), so that Redis going away
degrades a replica to its local state instead of failing its requests. `read_eviction` tells whether Redis
may evict what must not vanish (router/state/eviction.py).
"""

from router.state.base import StateStore, StoreHealth, StoreUnavailable, Write
from router.state.client import redis_client
from router.state.eviction import Eviction, read_eviction
from router.state.memory import MemoryStore
from router.state.open import PROBE_ENV, open_store
from router.state.outage import CONNECTION_ERRORS, is_outage
from router.state.redis import REDIS_CONNECT_TIMEOUT_S, REDIS_SOCKET_TIMEOUT_S, Applied, RedisStore
from router.state.resilient import ResilientStore
from router.state.url import REDIS_URL_FORMS, RedisTarget, RedisUrlError, parse_redis_url

__all__ = [
    "CONNECTION_ERRORS",
    "PROBE_ENV",
    "REDIS_CONNECT_TIMEOUT_S",
    "REDIS_SOCKET_TIMEOUT_S",
    "REDIS_URL_FORMS",
    "Applied",
    "Eviction",
    "MemoryStore",
    "RedisStore",
    "RedisTarget",
    "RedisUrlError",
    "ResilientStore",
    "StateStore",
    "StoreHealth",
    "StoreUnavailable",
    "Write",
    "is_outage",
    "open_store",
    "parse_redis_url",
    "read_eviction",
    "redis_client",
]
