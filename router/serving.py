"""Which router serves: loaded in the background at start-up, swapped on reload (SIGHUP, the admin
endpoint, or a change to the policy file's content when watched) while requests in flight finish on the
router they started with."""

from __future__ import annotations

import asyncio
import gc
import hashlib
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
    def __init__(
        self,
        policy: Policy,
        store: StateStore,
        metrics: Metrics,
        policy_path: Path | None,
        watch_s: float = 0.0,
    ) -> None:
        """`policy_path`: the file a reload reads; without one there is nothing to reload. `watch_s`: how
        often `watch_policy` looks at that file's content, and the calibrator's it names (0: never)."""
        self.policy, self.store, self.metrics, self.policy_path = policy, store, metrics, policy_path
        self.watch_s = watch_s
        self.router: Router | None = None
        self.failure: str | None = None
        self._reloading = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()  # reloads and retiring routers
        self._watching: asyncio.Task[None] | None = None
        # The content the serving policy was read from (the caller loaded `policy` from this file just
        # before): the watch reloads when the files' content differs from the last content read.
        self._digest = _digest(self._watched()) if policy_path is not None else None

    def load(self) -> None:
        """Blocking: loads the model and builds the first router."""
        try:
            self.router = Router(self.policy, LocalModel(self.policy.scorer.model), self.store, self.metrics)
            self.metrics.scorer_in_force(self.router.scoring.tag)
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
            # Read before the policy is, so that a write landing in between is seen by the next poll.
            self._digest = _digest(self._watched())
            try:
                successor = await current.reloaded(load_policy(self.policy_path))
            except Exception as exc:
                self.metrics.reloads.labels("failed").inc()
                problems = exc.problems if isinstance(exc, PolicyError) else [f"{type(exc).__name__}: {exc}"]
                raise APIError(400, f"Reload failed: {'; '.join(problems)}", code="reload_failed") from exc
            self.router = successor
            self.metrics.scorer_in_force(successor.scoring.tag)
            if successor.policy.scorer.calibrator != current.policy.scorer.calibrator:
                self._digest = _digest(self._watched())  # the calibrator watched from now on
            self.in_background(asyncio.create_task(current.close()))
            self.metrics.reloads.labels("ok").inc()
            log.info("reloaded: policy '%s', scorer %s", successor.policy.name, successor.scorer.version)
            return successor

    def reload_on_signal(self) -> None:
        self.in_background(asyncio.create_task(self._reload_logging_failure("SIGHUP")))

    async def _reload_logging_failure(self, trigger: str) -> None:
        try:
            await self.reload()
        except APIError as exc:
            log.error("%s: %s", trigger, exc.message)

    def watch_policy(self) -> None:
        """From the running loop: every `watch_s` seconds, reload if the policy file's content (or the
        calibrator's it names) changed. A content hash, not a modification time: a ConfigMap volume
        replaces its files by swapping a symlink to a fresh folder, which leaves no meaningful mtime on
        the path read."""
        if self.watch_s > 0 and self.policy_path is not None:
            self._watching = asyncio.create_task(self._watch())

    def _watched(self) -> list[Path]:
        """What a reload reads that an operator edits: the policy file and the calibrator it names."""
        assert self.policy_path is not None
        calibrator = (self.router.policy if self.router is not None else self.policy).scorer.calibrator
        return [self.policy_path, *([Path(calibrator)] if calibrator else [])]

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.watch_s)
            # Not before the first router is in: a change then is read when the watch looks again.
            if self.router is None or _digest(self._watched()) == self._digest:
                continue
            log.info("policy file %s or its calibrator changed: reloading", self.policy_path)
            # A failure logs one line per content seen (reload takes the digest before it loads). Shielded
            # and in the background: shutdown stops the watch, not a reload under way, which close awaits.
            reloading = asyncio.create_task(self._reload_logging_failure("policy watch"))
            self.in_background(reloading)
            await asyncio.shield(reloading)

    def in_background(self, task: asyncio.Task[None]) -> None:
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """At shutdown, after the server's drain: whatever still runs on the model stops at its next layer."""
        if self._watching is not None:
            self._watching.cancel()
        await asyncio.gather(*self._background)
        if self.router is not None:
            self.router.model.closing.set()
            await self.router.close()


def _digest(paths: list[Path]) -> str:
    """What the files hold, as one hash; an unreadable file is a content of its own, which the reload
    then reports (once)."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        except OSError as exc:
            digest.update(f"{path}: unreadable: {exc.strerror}".encode())
    return digest.hexdigest()
