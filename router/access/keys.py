"""API keys: who may call, and the limits each caller has. Kept in Redis, hashed, so every replica sees the
same keys; a key itself is shown once, when it is created, and never stored.

Redis (under the store's prefix; the braces are Redis Cluster hash tags: keys sharing one are in one slot,
so that a script may touch them together):
- `{keys}` (a hash): sha256 of a key -> its `ApiKey` as JSON;
- `{keys}:names` (a hash): name -> sha256 of its key, so that names are unique and revocable;
- `{keys}:version`: counts changes, so that a replica rereads the table only when it changed;
- `limit:{<name>}:requests|tokens|spent`: the caller's counters (router/access/limits.py), in their
  caller's slot, so that callers spread over a cluster's nodes.

A script changes the table; creating a key then resets its name's counters and revoking it deletes them
(a second command: the counters are in another slot; no replica knows the key before it rereads the
table). Redis without persistence loses every key when it restarts (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger("router")

KEY_PREFIX = "cr-"
KEYS = "{keys}"
NAMES = "{keys}:names"
VERSION = "{keys}:version"
REFRESH_S = 0.5
"""How often a replica rereads the key table: creation and revocation reach it within this."""
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ADMIN = "admin"
"""The tenant name of the admin key (ROUTER_ADMIN_KEY), which no created key may take."""


class KeyProblem(ValueError):
    """A key operation the registry refuses: a bad or taken name, an unknown one."""


@dataclass(frozen=True)
class ApiKey:
    name: str
    rpm: int | None = None
    """Requests per minute; None: unlimited."""
    tpm: int | None = None
    """Tokens (prompt and completion) per minute; None: unlimited."""
    budget_usd: float | None = None
    """Lifetime spend at the targets' costs; None: unlimited."""
    models: tuple[str, ...] | None = None
    """The model names (`router` or a target) this key may ask for; None: all."""
    created: float = field(default_factory=time.time)

    @property
    def limited(self) -> bool:
        return self.rpm is not None or self.tpm is not None or self.budget_usd is not None

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ApiKey:
        data: dict[str, Any] = json.loads(text)
        if data.get("models") is not None:
            data["models"] = tuple(data["models"])
        return cls(**data)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def counter_keys(name: str) -> tuple[str, str, str]:
    """The caller's request bucket, token bucket and spend, in one Cluster slot."""
    return f"limit:{{{name}}}:requests", f"limit:{{{name}}}:tokens", f"limit:{{{name}}}:spent"


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise KeyProblem(
            f"key name '{name}': use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    if name == ADMIN:
        raise KeyProblem(f"key name '{ADMIN}' is the admin key's")
    return name


_CREATE = """
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('INCR', KEYS[3])
return 1
"""
_REVOKE = """
local hashed = redis.call('HGET', KEYS[2], ARGV[1])
if not hashed then return 0 end
redis.call('HDEL', KEYS[1], hashed)
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('INCR', KEYS[3])
return 1
"""


class KeyRegistry:
    """What `router keys` does, straight against Redis: an operator's command fails loudly, never degrades."""

    def __init__(self, client: Any, prefix: str = "confidence-router:") -> None:
        self.client, self.prefix = client, prefix

    def _table(self) -> list[str]:
        return [self.prefix + k for k in (KEYS, NAMES, VERSION)]

    async def _reset_counters(self, name: str) -> None:
        await self.client.delete(*(self.prefix + k for k in counter_keys(name)))

    async def create(self, spec: ApiKey) -> str:
        """The new key (shown to the caller once)."""
        check_name(spec.name)
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        created = await self.client.eval(_CREATE, 3, *self._table(), spec.name, digest(key), spec.to_json())
        if not created:
            raise KeyProblem(f"a key named '{spec.name}' exists: revoke it first")
        await self._reset_counters(spec.name)
        return key

    async def revoke(self, name: str) -> None:
        if not await self.client.eval(_REVOKE, 3, *self._table(), name):
            raise KeyProblem(f"no key is named '{name}'")
        await self._reset_counters(name)

    async def listed(self) -> list[tuple[ApiKey, float]]:
        """Every key with what it has spent, by name."""
        keys = sorted(
            (ApiKey.from_json(v) for v in (await self.client.hgetall(self.prefix + KEYS)).values()),
            key=lambda k: k.name,
        )
        # One GET per caller in one pipeline: the counters are in as many slots as there are callers,
        # which one MGET cannot span on a cluster.
        async with self.client.pipeline(transaction=False) as pipe:
            for k in keys:
                pipe.get(self.prefix + counter_keys(k.name)[2])
            values: Sequence[str | None] = await pipe.execute()
        return [(k, float(v or 0)) for k, v in zip(keys, values, strict=True)]


class KeyTable:
    """A replica's copy of the key table, checked every REFRESH_S (one GET of its version; the table is
    reread when that changed): looking a key up costs no Redis call, so unknown keys cost Redis nothing
    either. While Redis is unreachable the last table read stays in force."""

    def __init__(self, client: Any, prefix: str = "confidence-router:") -> None:
        self.client, self.prefix = client, prefix
        self._by_digest: dict[str, tuple[str, ApiKey]] = {}
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._version: str | None = None

    def lookup(self, key: str) -> ApiKey | None:
        # Keys are found by their sha256: what a lookup's timing could tell is about digests, from which no
        # key can be recovered; the final comparison is constant-time all the same.
        hashed = digest(key)
        found = self._by_digest.get(hashed)
        if found is None or not hmac.compare_digest(found[0], hashed):
            return None
        return found[1]

    async def refresh(self) -> None:
        version = str(await self.client.get(self.prefix + VERSION))
        if version == self._version:
            return
        table = await self.client.hgetall(self.prefix + KEYS)
        self._version = version
        self._by_digest = {hashed: (hashed, ApiKey.from_json(value)) for hashed, value in table.items()}

    async def start(self) -> None:
        """Reads the table once (a failure is logged: the replica starts with no keys) and keeps it fresh."""
        await self._refresh_logged()
        self._task = asyncio.get_running_loop().create_task(self._keep_fresh())

    async def _refresh_logged(self) -> None:
        try:
            await self.refresh()
            if self._failing:
                log.info("keys: the key table is readable again (%d keys)", len(self._by_digest))
            self._failing = False
        except Exception as exc:  # the last table read stays in force
            if not self._failing:
                log.warning("keys: reading the key table failed (%s); keeping the last one read", exc)
            self._failing = True

    async def _keep_fresh(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            await self._refresh_logged()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
