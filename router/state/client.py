"""The redis.asyncio client for a --redis-url, whatever topology it names (router/state/url.py)."""

from __future__ import annotations

from typing import Any

import redis.asyncio
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel

from router.state.url import parse_redis_url


def redis_client(url: str, **options: Any) -> Any:
    """The redis.asyncio client for `url`: a plain client, a cluster client, or a client of the master a
    Sentinel names (asked again on every new connection, so a failover is followed). `options` apply to
    every connection: timeouts, `decode_responses`, `retry`. RedisUrlError for a URL it cannot use."""
    target = parse_redis_url(url)
    if target.topology == "single":
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
