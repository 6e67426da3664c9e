"""Per-key requests and tokens per minute, and spend budgets, shared by every replica through Redis.

Each limit is a token bucket holding at most a minute's allowance and refilling continuously: a key with
`rpm: N` gets N requests at once, then one every 60/N seconds. A request is admitted when its request
bucket holds a whole request and its token bucket is not empty, and when the key's spend is below its
budget; its tokens and cost are debited once its answer is known (so one large answer may take the token
bucket below zero, delaying the next requests). Admission is one Lua script on Redis's own clock: atomic
across replicas, one round trip; the debit is a second one, off the response path.

With Redis unreachable (the state store degraded) the same buckets run in this replica's memory: each
replica then admits up to the whole limit, and spend counts from the last total this replica read. What
a replica spends meanwhile is also kept with the store's writes for Redis (ResilientStore.keep_increment)
and added to the shared total when Redis is back, or when the replica shuts down; the token debits are
not (a bucket refills within a minute anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from router.access.keys import ApiKey, counter_keys
from router.state import StateStore, StoreUnavailable

log = logging.getLogger("router")

WINDOW_S = 60.0

_LEVEL = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function level(key, per_minute)
  local held = redis.call('HMGET', key, 'level', 'at')
  if not held[1] then return per_minute end
  return math.min(per_minute, tonumber(held[1]) + (now - tonumber(held[2])) * per_minute / 60)
end
local function keep(key, value, per_minute)
  redis.call('HSET', key, 'level', tostring(value), 'at', tostring(now))
  -- a bucket refills within a minute of its last use, after which missing means full
  redis.call('EXPIRE', key, 61 + math.ceil(math.max(0, -value) * 60 / per_minute))
end
"""
ADMIT = (
    _LEVEL
    + """
-- KEYS: requests, tokens, spent; ARGV: rpm, tpm, budget (0 or negative: none)
local rpm, tpm, budget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local spent = tonumber(redis.call('GET', KEYS[3]) or '0')
local requests, tokens = -1, -1
if rpm > 0 then requests = level(KEYS[1], rpm) end
if tpm > 0 then tokens = level(KEYS[2], tpm) end
local verdict = 'ok'
if budget >= 0 and spent >= budget then verdict = 'budget'
elseif rpm > 0 and requests < 1 then verdict = 'rpm'
elseif tpm > 0 and tokens <= 0 then verdict = 'tpm'
elseif rpm > 0 then requests = requests - 1; keep(KEYS[1], requests, rpm) end
return {verdict, tostring(requests), tostring(tokens), tostring(spent)}
"""
)
SETTLE = (
    _LEVEL
    + """
-- KEYS: tokens, spent; ARGV: tpm, tokens used, dollars spent
local tpm, used, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if tpm > 0 and used > 0 then keep(KEYS[1], level(KEYS[1], tpm) - used, tpm) end
if cost > 0 then redis.call('INCRBYFLOAT', KEYS[2], ARGV[3]) end
return 1
"""
)


@dataclass(frozen=True)
class Verdict:
    refused: str | None
    """None (admitted), or why not: `rpm`, `tpm` or `budget`."""
    requests: float
    """What the request bucket holds after this request (-1: no request limit)."""
    tokens: float
    spent: float
    key: ApiKey

    @property
    def retry_after_s(self) -> float:
        """Seconds until the refused request would be admitted (a budget never refills: 0)."""
        if self.refused == "rpm" and self.key.rpm:
            return (1 - self.requests) * WINDOW_S / self.key.rpm
        if self.refused == "tpm" and self.key.tpm:
            return (1 - self.tokens) * WINDOW_S / self.key.tpm
        return 0.0

    def headers(self) -> dict[str, str]:
        """OpenAI's x-ratelimit-* headers for the limits the key has."""
        headers: dict[str, str] = {}
        for kind, limit, held in (
            ("requests", self.key.rpm, self.requests),
            ("tokens", self.key.tpm, self.tokens),
        ):
            if limit is None:
                continue
            headers[f"x-ratelimit-limit-{kind}"] = str(limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, math.floor(held)))
            headers[f"x-ratelimit-reset-{kind}"] = duration((limit - held) * WINDOW_S / limit)
        return headers


def duration(seconds: float) -> str:
    """OpenAI's spelling of a reset time: 20ms, 1.5s, 6m0s."""
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60)
    shown = f"{rest:.3f}".rstrip("0").rstrip(".")
    return f"{int(minutes)}m{shown}s" if minutes else f"{shown}s"


class _Bucket:
    """The Lua buckets' arithmetic in this process, for when Redis cannot be asked."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute, self.held, self.at = per_minute, float(per_minute), time.monotonic()

    def level(self) -> float:
        now = time.monotonic()
        self.held = min(self.per_minute, self.held + (now - self.at) * self.per_minute / WINDOW_S)
        self.at = now
        return self.held


class LocalLimits:
    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str, int], _Bucket] = {}
        self.spent: dict[str, float] = {}
        """Per name: the last total read from Redis plus what this replica debited since."""

    def _bucket(self, name: str, kind: str, per_minute: int) -> _Bucket:
        # Keyed with the limit too, so a key re-created with another limit starts afresh.
        found = self._buckets.get((name, kind, per_minute))
        if found is None:
            found = self._buckets[(name, kind, per_minute)] = _Bucket(per_minute)
        return found

    def admit(self, key: ApiKey) -> Verdict:
        spent = self.spent.get(key.name, 0.0)
        requests = self._bucket(key.name, "requests", key.rpm).level() if key.rpm else -1.0
        tokens = self._bucket(key.name, "tokens", key.tpm).level() if key.tpm else -1.0
        refused = None
        if key.budget_usd is not None and spent >= key.budget_usd:
            refused = "budget"
        elif key.rpm and requests < 1:
            refused = "rpm"
        elif key.tpm and tokens <= 0:
            refused = "tpm"
        elif key.rpm:
            requests -= 1
            self._bucket(key.name, "requests", key.rpm).held = requests
        return Verdict(refused, requests, tokens, spent, key)

    def settle(self, key: ApiKey, tokens: int, cost: float) -> None:
        if key.tpm and tokens:
            bucket = self._bucket(key.name, "tokens", key.tpm)
            bucket.held = bucket.level() - tokens
        self.spent[key.name] = self.spent.get(key.name, 0.0) + cost


class Limits:
    """Admission and debits for keys that have limits: through Redis while the state store is healthy,
    else (and on the first failure) in this replica."""

    def __init__(self, store: StateStore, client: Any | None, prefix: str = "confidence-router:") -> None:
        """`client`: the Redis client behind `store`; None keeps every limit in this replica."""
        self.store, self.client, self.prefix = store, client, prefix
        self.local = LocalLimits()
        self._admit = client.register_script(ADMIT) if client is not None else None
        self._settle = client.register_script(SETTLE) if client is not None else None
        self._pending: set[asyncio.Task[None]] = set()

    def _keys(self, name: str, *which: int) -> list[str]:
        keys = counter_keys(name)
        return [self.prefix + keys[i] for i in which]

    @property
    def _shared(self) -> bool:
        return self._admit is not None and self.store.health().up

    async def admit(self, key: ApiKey) -> Verdict:
        if self._shared:
            assert self._admit is not None
            budget = -1.0 if key.budget_usd is None else key.budget_usd
            try:
                verdict, requests, tokens, spent = await self._admit(
                    self._keys(key.name, 0, 1, 2), [key.rpm or 0, key.tpm or 0, repr(budget)]
                )
            except Exception as exc:
                self._went_down(exc)
            else:
                self.local.spent[key.name] = float(spent)
                refused = None if verdict == "ok" else str(verdict)
                return Verdict(refused, float(requests), float(tokens), float(spent), key)
        return self.local.admit(key)

    def settle(self, key: ApiKey, tokens: int, cost: float) -> None:
        """Debit an answer's tokens and cost, in the background (the answer is not held up for it)."""
        if not (key.tpm and tokens) and not (key.budget_usd is not None and cost > 0):
            return
        task = asyncio.get_running_loop().create_task(self._debit(key, tokens, cost))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _debit(self, key: ApiKey, tokens: int, cost: float) -> None:
        if self._shared:
            assert self._settle is not None
            try:
                await self._settle(self._keys(key.name, 1, 2), [key.tpm or 0, tokens, repr(cost)])
                return
            except Exception as exc:
                self._went_down(exc)
        self.local.settle(key, tokens, cost)
        keep = getattr(self.store, "keep_increment", None)
        if keep is not None and cost > 0:
            with contextlib.suppress(StoreUnavailable):  # the store logged that its buffer is full
                keep(counter_keys(key.name)[2], cost)

    def _went_down(self, exc: Exception) -> None:
        report = getattr(self.store, "report_unreachable", None)
        if report is None:
            raise exc
        report(exc)  # raises what is not an outage (a programming error)

    async def close(self) -> None:
        """Waits for the debits still on their way."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
