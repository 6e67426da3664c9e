"""What a --redis-url names: one server, a Redis Cluster or a Sentinel-managed master (`REDIS_URL_FORMS`,
docs/operations.md), or a `RedisUrlError` that says what is wrong with it."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Literal

from redis.asyncio.connection import parse_url

REDIS_URL_FORMS = (
    "redis://[[user]:password@]host[:port][/db] (rediss:// with TLS, unix:///path), "
    "redis+cluster://[[user]:password@]host:port[,host:port...] (rediss+cluster:// with TLS), "
    "redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]"
)
_DEFAULT_PORT = {"redis+cluster": 6379, "rediss+cluster": 6379, "redis+sentinel": 26379}


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
