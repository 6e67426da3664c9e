"""Which router serves: loaded in the background at start-up, swapped on reload (SIGHUP or the admin
endpoint) while requests in flight finish on the router they started with."""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path

from localmodel.model import LocalModel
from policies import Policy, PolicyError, load_policy
from router.errors import APIError
from router.metrics import Metrics
from router.service import Router
from router.state import StateStore

log = logging.getLogger("router")


class Serving:
    def __init__(self, policy: Policy, store: StateStore, metrics: Metrics, policy_path: Path | None) -> None:
        """`policy_path`: the file a reload reads; without one there is nothing to reload."""
        self.policy, self.store, self.metrics, self.policy_path = policy, store, metrics, policy_path
        self.router: Router | None = None
        self.failure: str | None = None
        self._reloading = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()  # reloads and retiring routers

    def load(self) -> None:
        """Blocking: loads the model and builds the first router."""
        try:
            self.router = Router(self.policy, LocalModel(self.policy.scorer.model), self.store, self.metrics)
            # What is loaded now (the model's modules, torch, transformers) lives as long as the process:
            # out of the collector's sight, a full collection walks only what requests allocate (hundreds of
            # milliseconds per collection otherwise, which set the p99 under load). Garbage first: what is
            # frozen is never collected.
            gc.collect()
            gc.freeze()
            log.info("ready: policy '%s', model '%s'", self.policy.name, self.policy.scorer.model)
        except Exception as exc:  # reported by /readyz and every request; the log has the traceback
            log.exception("loading the model failed")
            self.failure = f"{type(exc).__name__}: {exc}"

    def ready(self) -> Router:
        if self.router is None:
            detail = self.failure or "the model is still loading"
            raise APIError(
                503, f"Not ready: {detail}", type="service_unavailable", headers={"Retry-After": "2"}
            )
        return self.router

    async def reload(self) -> Router:
        """Swap in a router for the policy file as it is now; the old one closes once its requests are
        done. Whatever fails to load, the old router keeps serving and the error says why."""
        async with self._reloading:
            current = self.ready()
            if self.policy_path is None:
                raise APIError(409, "Nothing to reload: this server was not started from a policy file")
            try:
                successor = await current.reloaded(load_policy(self.policy_path))
            except Exception as exc:
                self.metrics.reloads.labels("failed").inc()
                problems = exc.problems if isinstance(exc, PolicyError) else [f"{type(exc).__name__}: {exc}"]
                raise APIError(400, f"Reload failed: {'; '.join(problems)}", code="reload_failed") from exc
            self.router = successor
            self.in_background(asyncio.create_task(current.close()))
            self.metrics.reloads.labels("ok").inc()
            log.info("reloaded: policy '%s', scorer %s", successor.policy.name, successor.scorer.version)
            return successor

    def reload_on_signal(self) -> None:
        async def reload() -> None:
            try:
                await self.reload()
            except APIError as exc:
                log.error("SIGHUP: %s", exc.message)

        self.in_background(asyncio.create_task(reload()))

    def in_background(self, task: asyncio.Task[None]) -> None:
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """At shutdown, after the server's drain: whatever still runs on the model stops at its next layer."""
        await asyncio.gather(*self._background)
        if self.router is not None:
            self.router.model.closing.set()
            await self.router.close()
