"""Who is calling, and whether they may now: the bearer key, its models, its limits (OpenAI's errors)."""

from __future__ import annotations

import hmac
import math
from dataclasses import dataclass

from router.access.keys import ADMIN, ApiKey, KeyTable
from router.access.limits import Limits, Verdict
from router.errors import APIError

MAX_TENANT_LABELS = 100
"""Tenants named in metric labels; later ones are counted as `other`, so label cardinality stays bounded."""


@dataclass(frozen=True)
class Caller:
    name: str
    """The key's name: the tenant, for policy rules, the score cache, the decision log and metrics."""
    key: ApiKey | None
    """None for the admin key, which has no limits."""

    @property
    def admin(self) -> bool:
        return self.key is None


def _unauthenticated(message: str) -> APIError:
    return APIError(
        401,
        message,
        type="authentication_error",
        code="invalid_api_key",
        headers={"WWW-Authenticate": "Bearer"},
    )


class Gate:
    def __init__(self, keys: KeyTable | None, limits: Limits | None, admin_key: str | None) -> None:
        """`keys` None: no key table (no Redis); then only the admin key authenticates."""
        self.keys, self.limits, self.admin_key = keys, limits, admin_key
        self._labels: set[str] = set()

    def identify(self, authorization: str | None) -> Caller:
        """The caller a bearer key names; a 401 when there is none or it is unknown (or revoked)."""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _unauthenticated("Missing API key: send the header Authorization: Bearer <key>")
        if self.admin_key and hmac.compare_digest(token.encode(), self.admin_key.encode()):
            return Caller(ADMIN, None)
        key = self.keys.lookup(token) if self.keys else None
        if key is None:
            raise _unauthenticated("Incorrect API key provided: it is unknown or revoked")
        return Caller(key.name, key)

    def require_admin(self, caller: Caller) -> None:
        if not caller.admin:
            raise APIError(
                403, "This endpoint takes the admin key", type="permission_error", code="admin_only"
            )

    async def admit(self, caller: Caller, model: str | None) -> Verdict | None:
        """A 403 for a model the key may not use, a 429 when a limit or the budget is reached; else the
        verdict whose headers the answer carries (None: no limits apply). `model` None: no model asked."""
        key = caller.key
        if key is None:
            return None
        if model is not None and not key.may_use(model):
            allowed = ", ".join(key.models or ())
            raise APIError(
                403,
                f"The key '{key.name}' may not use the model '{model}' (it may use: {allowed})",
                type="permission_error",
                param="model",
                code="model_not_allowed",
            )
        if not key.limited or self.limits is None:
            return None
        verdict = await self.limits.admit(key)
        if verdict.refused is not None:
            raise _refusal(verdict)
        return verdict

    def settle(self, caller: Caller | None, tokens: int, cost: float) -> None:
        if caller is not None and caller.key is not None and caller.key.limited and self.limits is not None:
            self.limits.settle(caller.key, tokens, cost)

    def label(self, caller: Caller | None) -> str:
        """The tenant's metric label: its name for the first MAX_TENANT_LABELS seen, else `other`."""
        if caller is None:
            return "none"
        if caller.name in self._labels:
            return caller.name
        if len(self._labels) < MAX_TENANT_LABELS:
            self._labels.add(caller.name)
            return caller.name
        return "other"


def _refusal(verdict: Verdict) -> APIError:
    key = verdict.key
    if verdict.refused == "budget":
        return APIError(
            429,
            f"The key '{key.name}' has spent its budget (${verdict.spent:.4f} of ${key.budget_usd:g})",
            type="insufficient_quota",
            code="budget_exceeded",
        )
    kind, limit = ("requests", key.rpm) if verdict.refused == "rpm" else ("tokens", key.tpm)
    wait = verdict.retry_after_s
    headers = {**verdict.headers(), "Retry-After": str(max(1, math.ceil(wait)))}
    return APIError(
        429,
        f"Rate limit reached for {kind} per minute on the key '{key.name}': limit {limit}; "
        f"try again in {wait:.1f} s",
        type=kind,
        code="rate_limit_exceeded",
        headers=headers,
    )
