"""Cooldowns: a target that keeps failing is left alone for a while, by every replica.

Each failure a retry could help (TargetFailed) is pushed, as its wall-clock time, onto the target's
failure window in the shared store (the newest `failures` kept). When the window holds `failures` times
within `window_s`, none from before the target's last cooldown ended, the target cools down until
now + `cooldown_s`: that time is written under the target's cooldown key (with that TTL, so it clears
itself), and this replica's own view has it at once.

Other replicas learn of it from their view, refreshed from the store at most every REFRESH_S per target
and only when a request is about to call it: a healthy target costs one store read per REFRESH_S, not one
per request. Keys hold target names only, never request text. Times are wall-clock (time.time()) because
replicas compare them; clock skew between hosts shifts a cooldown by as much.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from policies import Cooldown
from router.state import StateStore, StoreUnavailable

log = logging.getLogger("router")

REFRESH_S = 0.5
"""How stale a replica's view of another replica's cooldown may be."""


def failures_key(target: str) -> str:
    return f"target:{target}:failures"


def cooldown_key(target: str) -> str:
    return f"target:{target}:cooldown-until"


class Cooldowns:
    def __init__(self, store: StateStore, specs: Mapping[str, Cooldown | None]) -> None:
        """`specs`: per target, its cooldown settings; None or `failures: 0` for one never cooled down."""
        self.store = store
        self.specs = {name: spec for name, spec in specs.items() if spec is not None and spec.failures}
        self._until: dict[str, float] = {}
        """Target -> when its latest known cooldown ends (wall clock; in the past once it has)."""
        self._read_at: dict[str, float] = {}
        """Target -> when the view was last refreshed from the store (monotonic clock)."""

    async def left(self, target: str) -> float:
        """Seconds the target still cools down for; 0 when it may be called."""
        if target not in self.specs:
            return 0.0
        now = time.monotonic()
        if now - self._read_at.get(target, -REFRESH_S) >= REFRESH_S:
            self._read_at[target] = now  # before the read: concurrent requests keep the view meanwhile
            await self._refresh(target)
        return self.view(target)

    def view(self, target: str) -> float:
        """`left` as this replica knows it now, without asking the store."""
        return max(0.0, self._until.get(target, 0.0) - time.time())

    async def failed(self, target: str) -> None:
        """Count a failure a retry could help; cool the target down once there are enough."""
        spec = self.specs.get(target)
        if spec is None:
            return
        now = time.time()
        key = failures_key(target)
        try:
            await self.store.push(key, repr(now), spec.failures)
        except StoreUnavailable:  # kept in this replica's mirror all the same, and counted from it
            log.debug("target %s: its failure could not be queued for the shared store", target)
        since = max(now - spec.window_s, self._until.get(target, 0.0))
        recent = [float(value) for value in await self.store.recent(key, spec.failures)]
        if sum(1 for at in recent if at >= since) < spec.failures or self.view(target) > 0:
            return
        until = now + spec.cooldown_s
        # One replica starts a cooldown; others that trip at the same time take its end, not a later one.
        try:
            started = await self.store.set_if_absent(cooldown_key(target), repr(until), spec.cooldown_s)
        except StoreUnavailable:  # not shared then, but this replica at least stops calling the target
            started = True
        if started:
            self._until[target] = until
            log.warning(
                "target %s: %d failures within %g s; not called for %g s",
                target,
                spec.failures,
                spec.window_s,
                spec.cooldown_s,
            )
        else:
            await self._refresh(target)

    async def _refresh(self, target: str) -> None:
        stored = await self.store.get(cooldown_key(target))
        if stored is not None:
            # max: this replica's own cooldown holds even before the store has its write (an outage).
            self._until[target] = max(self._until.get(target, 0.0), float(stored))
