"""Raw scores keyed by (scorer version, normalised conversation): a repeated question costs one lookup.

Raw, not calibrated: confidences are computed from them on every use, so a new calibrator applies at once."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json

from localmodel import Draft, Message
from router.state import StateStore, StoreUnavailable
from scorers import RawScore


def conversation_key(messages: list[Message]) -> str:
    """Whitespace and key order do not change the key; roles and content do."""
    canonical = [
        {"role": m["role"], "content": " ".join(str(m.get("content") or "").split())} for m in messages
    ]
    return hashlib.sha256(json.dumps(canonical, ensure_ascii=False).encode()).hexdigest()


class ScoreCache:
    def __init__(self, store: StateStore, scorer_version: str, ttl_s: float | None) -> None:
        self.store, self.ttl_s = store, ttl_s
        self.namespace = f"score:{hashlib.sha256(scorer_version.encode()).hexdigest()[:16]}:"

    async def get(
        self, messages: list[Message], max_new_tokens: int, tenant: str | None = None
    ) -> RawScore | None:
        found = await self.store.get(self._key(messages, max_new_tokens, tenant))
        if found is None:
            return None
        data = json.loads(found)
        draft = data.pop("draft")
        if draft is not None:
            draft["token_logprobs"] = tuple(draft["token_logprobs"])
        return RawScore(data["raw"], None if draft is None else Draft(**draft), data.get("task"))

    async def put(
        self, messages: list[Message], max_new_tokens: int, score: RawScore, tenant: str | None = None
    ) -> None:
        # json keeps floats exact (repr round-trips), so a cached score is the identical score. A cache
        # write the store cannot keep (Redis away, its replay buffer full) is only a lost cache entry.
        with contextlib.suppress(StoreUnavailable):
            await self.store.set(
                self._key(messages, max_new_tokens, tenant), json.dumps(dataclasses.asdict(score)), self.ttl_s
            )

    def _key(self, messages: list[Message], max_new_tokens: int, tenant: str | None) -> str:
        # A draft's length limit changes the draft, so it is part of the key for scorers that draft.
        owner = "" if tenant is None else hashlib.sha256(tenant.encode()).hexdigest()[:16] + ":"
        return f"{self.namespace}{owner}{max_new_tokens}:{conversation_key(messages)}"
