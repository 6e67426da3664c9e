"""What a remote target's failure was, and what the client is told about it (docs/upstream.md has the
table). Pure: classifies what litellm, or the openai target's HTTP client, raised; builds OpenAI-shaped
errors; no calls."""

from __future__ import annotations

import email.utils
import json
import math
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from policies import RemoteTarget
from router.errors import APIError
from router.targets.base import TargetFailed

RETRIED_KINDS = frozenset({"timeout", "connection", "server", "rate_limit"})
NO_RETRY = {"x-should-retry": "false"}
"""On errors the router already retried (or that retrying cannot fix); the openai SDKs honour it."""


class Malformed(Exception):
    """The upstream answered 200 with something that is not a chat completion (or a stream of one)."""


@dataclass(frozen=True)
class Failure:
    """One failed attempt, classified."""

    kind: str
    """The router_upstream_errors kind: timeout, connection, server, rate_limit, auth, not_found,
    bad_request, malformed, other."""
    status: int | None = None
    """The upstream's HTTP status, when it answered with one."""
    retry_after: float | None = None
    """Seconds, from the upstream's Retry-After (or retry-after-ms)."""
    detail: str = ""
    """The upstream's own error message (litellm's prefixes removed)."""
    param: str | None = None

    @property
    def retried(self) -> bool:
        return self.kind in RETRIED_KINDS


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception, its causes and contexts, and litellm's `original_exception`s."""
    found: list[BaseException] = []
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop(0)
        if current is None or any(current is seen for seen in found):
            continue
        found.append(current)
        original = getattr(current, "original_exception", None)
        pending += [current.__cause__, current.__context__]
        if isinstance(original, BaseException):
            pending.append(original)
    return found


def retry_after_s(headers: Any) -> float | None:
    """Seconds from `retry-after-ms` or `Retry-After` (delta-seconds or an HTTP date); None without one."""
    if headers is None:
        return None
    try:
        milliseconds, value = headers.get("retry-after-ms"), headers.get("retry-after")
    except AttributeError:
        return None
    try:
        if milliseconds is not None:
            return max(0.0, float(milliseconds) / 1000)
        if value is None:
            return None
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(str(value))
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _headers(exc: BaseException) -> Any:
    """The upstream's response headers, where litellm kept them."""
    for candidate in (
        getattr(exc, "litellm_response_headers", None),
        getattr(exc, "headers", None),
        getattr(getattr(exc, "response", None), "headers", None),
    ):
        if candidate:
            return candidate
    return None


_PREFIX = re.compile(r"^(?:litellm\.\w+:\s*)?(?:\w+Error:\s*)?(?:\w+Exception\s*-\s*)?")


def _detail(exc: BaseException) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return _PREFIX.sub("", str(getattr(exc, "message", None) or exc)).strip()


def classify(exc: BaseException) -> Failure:
    """What went wrong, from what litellm raised. Checked in this order: an answer that is not a chat
    completion, a timeout, a connection failure (litellm labels a reset connection HTTP 500), then the
    upstream's status."""
    import aiohttp
    import httpx
    import openai

    chain = _chain(exc)
    detail = _detail(exc)
    if any(isinstance(e, Malformed | json.JSONDecodeError) for e in chain) or (
        "Empty or invalid response" in detail
    ):
        return Failure("malformed", detail=detail)
    if any(isinstance(e, ImportError) for e in chain):  # a litellm code path that needs a missing extra
        return Failure("other", detail=detail)
    if any(isinstance(e, TimeoutError | openai.APITimeoutError | httpx.TimeoutException) for e in chain):
        return Failure("timeout")
    # aiohttp (the openai kind's client): a server that hung up or a body cut short is not an OSError there.
    connection = openai.APIConnectionError | httpx.TransportError | OSError
    cut = aiohttp.ClientConnectionError | aiohttp.ClientPayloadError
    if any(isinstance(e, connection | cut) for e in chain):
        return Failure("connection")
    status = getattr(exc, "status_code", None)
    if not isinstance(status, int):
        return Failure("other", detail=detail)
    param = getattr(exc, "param", None)
    return Failure(
        _STATUS_KINDS.get(status, "server" if status >= 500 else "other"),
        status,
        retry_after_s(_headers(exc)),
        detail,
        param if isinstance(param, str) else None,
    )


_STATUS_KINDS = {
    400: "bad_request",
    401: "auth",
    403: "auth",
    404: "not_found",
    408: "timeout",
    413: "bad_request",
    422: "bad_request",
    429: "rate_limit",
}


def client_error(name: str, target: RemoteTarget, failure: Failure, attempts: int) -> APIError:
    """The client's error for the last failure (docs/upstream.md has the table). Messages name the
    target and what it did, never the key; the upstream's own words only where the client can act on
    them (a request the upstream refused). A failure a retry could help is a TargetFailed: a fallback
    may answer instead."""
    status, kind = failure.status, failure.kind
    tries = f"{attempts} attempt{'s' if attempts > 1 else ''}"
    http, code, headers = 502, "upstream_failed", NO_RETRY
    retry_after = (
        None if failure.retry_after is None else {"Retry-After": str(math.ceil(failure.retry_after))}
    )
    if kind == "rate_limit":
        http, code, headers = 429, "upstream_rate_limited", retry_after or {}
        what = f"it is rate-limiting the router (HTTP 429, {tries})"
    elif kind == "server" and status == 503 and retry_after:
        http, code, headers = 503, "upstream_unavailable", retry_after
        what = f"it is unavailable and asks to be retried later (HTTP 503, {tries})"
    elif kind == "bad_request":
        http = 413 if status == 413 else 400
        code = "upstream_request_too_large" if status == 413 else "upstream_bad_request"
        what = f"it rejected the request (HTTP {status}): {_scrubbed(failure.detail, target)}"
    elif kind == "timeout":
        http, code = 504, "upstream_timeout"
        what = f"no answer within timeout_s ({target.timeout_s:g} s, {tries})"
    elif kind == "connection":
        code, what = "upstream_connection", f"unreachable (connection refused, reset or cut; {tries})"
    elif kind == "server":
        code, what = "upstream_server_error", f"HTTP {status} ({tries})"
    elif kind == "auth":
        code = "upstream_auth_failed"
        what = (
            f"it refused the router's credentials (HTTP {status}): the router's configuration for this "
            "target is wrong, not your API key"
        )
    elif kind == "not_found":
        code = "upstream_not_found"
        what = (
            "it does not know the model it is configured with (HTTP 404): the router's configuration for "
            "this target is wrong"
        )
    elif kind == "malformed":
        code, what = "upstream_malformed", "its answer is not a chat completion"
    else:
        what = f"HTTP {status}" if status else "an unexpected error"
    fields: dict[str, Any] = {
        "type": "upstream_error",
        "param": failure.param if http < 500 else None,
        "code": code,
        "headers": headers,
    }
    message = f"target '{name}' failed: {what}"
    if failure.retried:
        return TargetFailed(kind, http, message, **fields)
    return APIError(http, message, **fields)


def _scrubbed(text: str, target: RemoteTarget, limit: int = 500) -> str:
    """The upstream's words for the client: never the target's key, and not at any length."""
    key = os.environ.get(target.api_key_env) if target.api_key_env else None
    if key:
        text = text.replace(key, "***")
    return text if len(text) <= limit else text[: limit - 3] + "..."
