"""Fallbacks: a request goes to its chosen target, then to that target's `fallbacks` in order, until one
answers. A target is passed over when it is cooling down (it is not called at all) or when it fails in a
way another target can help with (a TargetFailed: timeout, connection, 5xx, 429, local overload; after
its own retries). Any other failure ends the search: it is about the request or the router's own
configuration, which another target would not mend. When no target answers, the client gets the first
failure's error, as it would have without fallbacks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from router.cooldown import Cooldowns
from router.errors import APIError
from router.metrics import Metrics
from router.targets import TargetFailed

log = logging.getLogger("router")
T = TypeVar("T")


@dataclass(frozen=True)
class Answered(Generic[T]):
    target: str
    result: T
    skipped: tuple[tuple[str, str], ...] = ()
    """(target, reason) for each choice passed over, in order."""

    @property
    def fallback(self) -> str | None:
        """The x-router-fallback header: `target:reason` per choice passed over; None without any."""
        return ",".join(f"{target}:{reason}" for target, reason in self.skipped) or None


def cooling_down(target: str, left_s: float) -> APIError:
    seconds = max(1, math.ceil(left_s))
    return APIError(
        503,
        f"target '{target}' is cooling down after repeated failures; retry in {seconds} s",
        type="service_unavailable",
        code="target_cooling_down",
        headers={"Retry-After": str(seconds)},
    )


async def first_answer(
    order: Sequence[str],
    attempt: Callable[[str], Awaitable[T]],
    cooldowns: Cooldowns,
    metrics: Metrics,
) -> Answered[T]:
    """`attempt(target)` for each target of `order` in turn, until one answers."""
    skipped: list[tuple[str, str]] = []
    first: APIError | None = None
    for position, name in enumerate(order):
        left = await cooldowns.left(name)
        error: APIError
        if left > 0:
            error, reason = cooling_down(name, left), "cooling_down"
        else:
            try:
                return Answered(name, await attempt(name), tuple(skipped))
            except TargetFailed as exc:
                _count(metrics, name, exc)
                await cooldowns.failed(name)
                error, reason = exc, exc.reason
            except APIError as exc:
                _count(metrics, name, exc)
                if first is None:
                    raise
                log.warning("target %s, a fallback, failed too (%s): %s", name, exc.code, exc.message)
                raise first from exc
        first = first or error
        skipped.append((name, reason))
        if position + 1 < len(order):
            following = order[position + 1]
            metrics.fell_back(name, following, reason)
            log.warning("target %s: %s; falling back to %s", name, reason, following)
    assert first is not None, "a request has at least one target to ask"
    raise first


def _count(metrics: Metrics, target: str, error: APIError) -> None:
    if error.type == "upstream_error":
        metrics.upstream_failed(target, error.code)
