"""Capturing: a sampled share of routed conversations kept with their answers, so that they can be labelled
and trained on later (the policy's `capture:`; `router traffic export` reads them, router/traffic_cli.py).

Each tenant's rows are a log of their own in the store, `capture:<tenant>` (`-` without a key): its newest
`max_rows`, expiring `retention_days` after the newest. Every match of a `redact` pattern is replaced before
the row is built, so what the store holds never had it. A streamed answer is gathered as the client
receives it (a Responses answer passed through: its output text), and its row is written once the stream
has ended; a stream that fails or that the client leaves stores nothing, since part of an answer would be
labelled as the answer. A request the policy's
`explore:` picks is handed to exploring (router/stages/exploring.py) instead, which writes its row with the
candidates' shadow answers beside the client's (`shadow`, target -> text) once they are in.

Off without Redis: the in-process store would keep the rows where no command can read them. Storing never
fails or holds up a request beyond one write: with Redis away the row waits with the other writes
(router/state/resilient.py) or, when those are full, is dropped and counted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from localmodel import Message
from policies import Policy
from policies.schema import NO_TENANT
from router import completions
from router.metrics import Metrics
from router.schemas import ChatCompletionRequest
from router.stages.exploring import Exploring
from router.state import StateStore, StoreUnavailable
from router.targets import Asked, Chunks
from router.targets.responses_upstream import output_text

if TYPE_CHECKING:  # they import the model, which `router traffic` must not load
    from router.stages.scoring import Scored
    from router.stages.shaping import Routed

log = logging.getLogger("router")

CAPTURE_PREFIX = "capture:"
REDACTED = "[redacted]"


def capture_key(tenant: str | None) -> str:
    return f"{CAPTURE_PREFIX}{tenant or NO_TENANT}"


def sampled(request_id: str, share: float) -> bool:
    """Whether a request is in the share: a hash of its id, so every replica would say the same."""
    drawn = int.from_bytes(hashlib.sha256(request_id.encode()).digest()[:8], "big")
    return drawn < share * 2**64


class Capturing:
    def __init__(
        self,
        policy: Policy,
        store: StateStore,
        metrics: Metrics,
        predicts: dict[str, str],
        exploring: Exploring | None = None,
    ) -> None:
        """`predicts`: policy target -> the scorer target whose confidence is that target's; `exploring`:
        what asks the policy's explore: candidates for shadow answers before a row is written."""
        self.spec, self.store, self.metrics, self.predicts = policy.capture, store, metrics, predicts
        if self.spec is not None and store.health().mode == "memory":
            log.warning("capture: off, for want of Redis (--redis-url): `router traffic export` reads it")
            self.spec = None
        self.patterns = [re.compile(pattern) for pattern in self.spec.redact] if self.spec else []
        self.exploring = exploring if self.spec is not None and policy.explore is not None else None

    async def capture(
        self,
        routed: Routed,
        messages: list[Message],
        scored: Scored | None,
        tenant: str | None,
        request: ChatCompletionRequest | None = None,
        asked: Asked | None = None,
    ) -> Routed:
        """`routed`, its stream (if any) gathered for its row when the request is one to keep. `request` and
        `asked` are what the explore: candidates are asked (no exploring without them)."""
        spec = self.spec
        if spec is None:
            return routed
        if not sampled(routed.request_id, spec.share) or (
            spec.tenants is not None and (tenant or NO_TENANT) not in spec.tenants
        ):
            self.metrics.captured.labels("skipped").inc()
            return routed
        row = self._row(routed, messages, scored, tenant)
        shadowed = None
        if self.exploring is not None and self.exploring.wants(routed.request_id):
            shadowed = (request, asked) if request is not None and asked is not None else None
        if routed.chunks is None:
            assert routed.body is not None
            body = routed.body
            text = output_text(body) if routed.passed else completions.content_of(body)
            await self._keep(row, text, shadowed)
            return routed
        gathered = Gathered(routed.chunks, lambda text: self._keep(row, text, shadowed), self._aborted)
        return dataclasses.replace(routed, chunks=gathered)

    async def _keep(
        self, row: dict[str, Any], answer: str, shadowed: tuple[ChatCompletionRequest, Asked] | None
    ) -> None:
        """The row written now, or, when it is explored, once its shadow answers are in."""
        if shadowed is not None:
            assert self.exploring is not None

            async def keep(shadow: dict[str, str]) -> None:
                await self._store(row, answer, shadow)

            if self.exploring.submit(row["target"], *shadowed, keep):
                return
        await self._store(row, answer)

    def _row(
        self, routed: Routed, messages: list[Message], scored: Scored | None, tenant: str | None
    ) -> dict[str, Any]:
        decision = routed.decision
        confidences = {}
        if scored is not None:
            confidences = {name: scored.confidence[model] for name, model in self.predicts.items()}
        return {
            "id": routed.request_id,
            "tenant": tenant or NO_TENANT,
            "time": round(time.time(), 3),
            "messages": [{"role": m["role"], "content": self._redacted(m["content"])} for m in messages],
            "decision": {
                "action": decision.action,
                "outcome": decision.outcome,
                "rule": decision.rule,
                "target": decision.target,
                "confidence": decision.confidence,
            },
            "confidences": confidences,
            "family": None if scored is None else scored.family,
            "target": decision.target,
        }

    def _redacted(self, text: str) -> str:
        for pattern in self.patterns:
            text = pattern.sub(REDACTED, text)
        return text

    async def _store(self, row: dict[str, Any], answer: str, shadow: dict[str, str] | None = None) -> None:
        """Never raises: the client has its answer, whatever becomes of the row. `shadow`: the explore:
        candidates' answers (target -> text)."""
        assert self.spec is not None
        shadows = {name: self._redacted(text) for name, text in (shadow or {}).items()}
        value = json.dumps({**row, "answer": self._redacted(answer), "shadow": shadows})
        try:
            await self.store.append(
                capture_key(row["tenant"]), value, self.spec.max_rows, self.spec.retention_days * 86400
            )
        except StoreUnavailable:  # the store logged that its buffer is full
            self.metrics.captured.labels("dropped").inc()
        except Exception:
            self.metrics.captured.labels("dropped").inc()
            log.exception("capture: the row of request %s was not stored", row["id"])
        else:
            self.metrics.captured.labels("stored").inc()

    def _aborted(self) -> None:
        self.metrics.captured.labels("aborted").inc()


class Gathered:
    """A stream passed on chunk for chunk as it is, its text gathered on the way: `done(text)` once it has
    ended, `aborted()` instead when it failed or was closed before its end."""

    def __init__(
        self, chunks: Chunks, done: Callable[[str], Awaitable[None]], aborted: Callable[[], None]
    ) -> None:
        self.chunks, self.done, self.aborted = chunks, done, aborted
        self._ended = False
        self._iterator = self._gathered()

    def __aiter__(self) -> AsyncIterator[completions.Completion]:
        return self._iterator

    async def aclose(self) -> None:
        await self._iterator.aclose()
        await self.chunks.aclose()
        if not self._ended:
            self._ended = True
            self.aborted()

    async def _gathered(self) -> AsyncGenerator[completions.Completion]:
        parts: list[str] = []
        async for chunk in self.chunks:
            delta = ((chunk.get("choices") or [{}])[0]).get("delta") or {}
            if delta.get("content"):
                parts.append(delta["content"])
            elif chunk.get("type") == "response.output_text.delta":  # a Responses stream passed through
                parts.append(str(chunk.get("delta") or ""))
            yield chunk
        self._ended = True
        await self.done("".join(parts))
