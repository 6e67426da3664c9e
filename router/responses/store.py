"""Stored responses: for previous_response_id and GET/DELETE /v1/responses/{id}, in the store every replica
shares.

Each is `response:<tenant>:<digest of its id>` (`-` without a key), holding the Response object as the client
got it, the conversation it ends (every input item of the chain and its output, in canonical form), and the
id of the chain's first response (a session key: router/stages/sessions.py). A tenant's responses are entered
in an index of its own, `responses:<tenant>`, of at most `responses.per_tenant`: a newer one pushes out the
tenant's oldest, never another tenant's, and each expires `responses.ttl_s` after it was written. Another
tenant's id is a digest under another prefix, so it is not found: a 404, as an unknown id is.

Storing never fails a request that was answered: with Redis away the write waits with the replica's others
(router/state/resilient.py), or is dropped when those are full, and logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from policies.schema import NO_TENANT, ResponsesSpec
from router.errors import APIError
from router.responses.request import Item
from router.state import StateStore, StoreUnavailable

log = logging.getLogger("router")

PREFIX = "response:"
INDEX_PREFIX = "responses:"


@dataclass(frozen=True)
class Stored:
    response: dict[str, Any]
    """The Response object, as the client got it."""
    items: list[Item]
    """The conversation it ends: the chain's input items and outputs, in canonical form."""
    session: str
    """The id of the chain's first response."""


def not_found(response_id: str) -> APIError:
    return APIError(
        404,
        f"No response with id '{response_id}' is stored for this key: {_WHY}",
        param="response_id",
        code="response_not_found",
    )


def previous_not_found(response_id: str) -> APIError:
    return APIError(
        400,
        f"Previous response with id '{response_id}' not found: {_WHY}",
        param="previous_response_id",
        code="previous_response_not_found",
    )


_WHY = (
    "it was made with store: false or by another key, was deleted, or is older than the router keeps "
    "responses (policy responses.ttl_s, responses.per_tenant)"
)


class ResponseStore:
    def __init__(self, spec: ResponsesSpec, store: StateStore) -> None:
        self.spec, self.store = spec, store

    @staticmethod
    def _key(tenant: str | None, response_id: str) -> str:
        digest = hashlib.sha256(response_id.encode()).hexdigest()[:32]
        return f"{PREFIX}{tenant or NO_TENANT}:{digest}"

    async def get(self, tenant: str | None, response_id: str) -> Stored | None:
        value = await self.store.get(self._key(tenant, response_id))
        if value is None:
            return None
        kept = json.loads(value)
        return Stored(kept["response"], kept["items"], kept["session"])

    async def put(self, tenant: str | None, stored: Stored) -> None:
        """Never raises: the client has its answer whatever becomes of the write."""
        value = json.dumps(
            {"response": stored.response, "items": stored.items, "session": stored.session},
            ensure_ascii=False,
        )
        index = f"{INDEX_PREFIX}{tenant or NO_TENANT}"
        key = self._key(tenant, str(stored.response.get("id")))
        try:
            await self.store.set_indexed(key, value, self.spec.ttl_s, index, self.spec.per_tenant)
        except StoreUnavailable:  # the store logged that its buffer is full
            log.warning("responses: a response was not stored (the store keeps no more writes)")
        except Exception:
            log.exception("responses: a response was not stored")

    async def delete(self, tenant: str | None, response_id: str) -> bool:
        """Whether there was one to delete."""
        key = self._key(tenant, response_id)
        if await self.store.get(key) is None:
            return False
        try:
            await self.store.delete(key)
        except StoreUnavailable as exc:  # not acknowledged: the response would come back with Redis
            raise APIError(
                503,
                "Not deleted: the state store is unreachable and this replica cannot keep more writes for "
                "it; retry later",
                type="service_unavailable",
                headers={"Retry-After": "1"},
            ) from exc
        return True
