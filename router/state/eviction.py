"""Whether Redis may evict what the router must not lose. API keys, spend and the bounded windows have no
TTL (docs/operations.md, "What Redis holds"): a `volatile-*` policy evicts only keys with a TTL, so it never
touches them, and `noeviction` evicts nothing (at maxmemory Redis refuses writes instead, and replicas
serve degraded); an `allkeys-*` policy may evict anything, API keys and budgets included.

Read once at start-up with CONFIG GET (on a cluster, from every primary), and said in one log line and in
/readyz. A Redis that forbids CONFIG (an ACL without it, a managed Redis that renames it) or does not answer
leaves the policy unknown: the router says so and serves all the same.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from redis.asyncio.cluster import RedisCluster

log = logging.getLogger("router")

RECOMMENDED = "volatile-lru"
"""Evicts the least recently used keys that have a TTL: old decisions and cached scores before the limit
buckets a busy key uses on every request (`volatile-ttl` would evict those first: they live 61 s)."""
UNSAFE_PREFIX = "allkeys-"


@dataclass(frozen=True)
class Eviction:
    policy: str | None
    """Redis's maxmemory-policy; None when it could not be read."""
    maxmemory: int | None = None
    """Bytes; 0: no limit (Redis grows until the host runs out)."""
    unread: str = ""
    """Why the policy could not be read."""

    @property
    def safe(self) -> bool | None:
        """False when Redis may evict keys that must not vanish; None when unknown."""
        return None if self.policy is None else not self.policy.startswith(UNSAFE_PREFIX)

    @property
    def warning(self) -> str | None:
        if self.policy is None:
            return (
                f"could not read Redis's maxmemory-policy ({self.unread}): make sure it is "
                f"{RECOMMENDED} or another volatile-* policy, never allkeys-*"
            )
        if not self.safe:
            return (
                f"Redis's maxmemory-policy is {self.policy}: at maxmemory it may evict API keys, budgets and "
                f"spend, which have no TTL; set maxmemory-policy {RECOMMENDED}"
            )
        return None

    def readiness(self) -> dict[str, object]:
        """The /readyz field."""
        found: dict[str, object] = {
            "policy": self.policy,
            "maxmemory_bytes": self.maxmemory,
            "safe": self.safe,
        }
        if self.warning is not None:
            found["warning"] = self.warning
        return found

    def report(self) -> None:
        """One log line: a WARNING when keys that must not vanish may be evicted."""
        if self.safe is False:
            log.warning('redis: %s (docs/operations.md, "Redis settings")', self.warning)
        elif self.safe is None:
            log.info('redis: %s (docs/operations.md, "Redis settings")', self.warning)
        elif self.policy == "noeviction":
            log.info(
                "redis: maxmemory-policy noeviction, maxmemory %s: at maxmemory Redis refuses writes and "
                "replicas serve degraded; %s evicts old decisions and cached scores instead",
                self.maxmemory or "none",
                RECOMMENDED,
            )
        else:
            log.info("redis: maxmemory-policy %s, maxmemory %s", self.policy, self.maxmemory or "none")


async def read_eviction(client: Any) -> Eviction:
    """What `client`'s Redis says; never raises for a Redis that will not tell (see the module)."""
    try:
        configs: list[dict[Any, Any]]
        if isinstance(client, RedisCluster):
            replies: dict[Any, Any] = await client.config_get("maxmemory*", target_nodes=client.PRIMARIES)
            configs = list(replies.values()) if _per_node(replies) else [replies]
        else:
            configs = [await client.config_get("maxmemory*")]
    except Exception as exc:  # NOPERM, an unknown (renamed) command, an outage: all mean "not known"
        return Eviction(None, unread=f"{type(exc).__name__}: {exc}")
    found = [_eviction(config) for config in configs]
    # The primary that could evict keys that must not vanish speaks for the cluster.
    return next((e for e in found if e.safe is False), found[0])


def _per_node(replies: dict[Any, Any]) -> bool:
    return all(isinstance(value, dict) for value in replies.values())


def _eviction(config: dict[Any, Any]) -> Eviction:
    policy, maxmemory = config.get("maxmemory-policy"), config.get("maxmemory")
    if policy is None:
        return Eviction(None, unread="CONFIG GET returned no maxmemory-policy")
    return Eviction(str(policy), None if maxmemory is None else int(maxmemory))
