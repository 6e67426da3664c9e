"""The one middleware every HTTP request passes: a bounded body, cancellation when the client goes away, a
count of responses by route and status, and the request's one log line.

Pure ASGI rather than Starlette's BaseHTTPMiddleware, which copies every response through a memory stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

log = logging.getLogger("router")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyTooLarge(Exception):
    pass


class RequestGuard:
    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: Callable[[], int],
        responded: Callable[[str, int], None],
    ) -> None:
        """`max_body_bytes` is asked per request (a reload may change it); `responded(route, status)` is
        called once per response, with the route template (a bounded label) rather than the URL."""
        self.app, self.max_body_bytes, self.responded = app, max_body_bytes, responded

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        arrived = time.perf_counter()
        limit = self.max_body_bytes()
        try:
            body = await _read_body(scope, receive, limit)
        except BodyTooLarge:
            message = f"Request body too large: the limit is {limit} bytes (policy limits.max_body_bytes)"
            await _error(send, 413, message, "request_too_large")
            self.responded("unmatched", 413)
            _log_request(scope, "unmatched", 413, (), arrived)
            return
        status = 500
        headers: Any = ()
        started = False
        finished = asyncio.Event()
        disconnected = asyncio.Event()
        replayed = False

        async def app_receive() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def app_send(message: Message) -> None:
            nonlocal status, started, headers
            if message["type"] == "http.response.start":
                status, started, headers = message["status"], True, message.get("headers", ())
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                finished.set()
            await send(message)

        handler = asyncio.current_task()
        assert handler is not None
        # A client that goes away cancels its request: its place in the scoring queue, its generation on
        # the model's worker (see LocalModel.abortable) and its upstream call.
        watcher = asyncio.create_task(_watch(receive, finished, disconnected, handler))
        try:
            await self.app(scope, app_receive, app_send)
        except asyncio.CancelledError:
            if disconnected.is_set():
                handler.uncancel()
                status = 499  # nginx's "client closed request": nobody reads this response
            elif started:
                raise  # a shutdown cut a stream: the connection closes
            else:  # a shutdown's grace period ran out: say so rather than let the server send a bare 500
                handler.uncancel()
                status = 503
                await _error(send, 503, "The server is shutting down; retry", "shutting_down", retry=True)
        finally:
            watcher.cancel()
            route = _route(scope)
            self.responded(route, status)
            _log_request(scope, route, status, headers, arrived)


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    for name, value in scope.get("headers", ()):
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise BodyTooLarge
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:  # a chunked body declares no length: count what arrives
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _watch(
    receive: Receive, finished: asyncio.Event, disconnected: asyncio.Event, handler: asyncio.Task[Any]
) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            # A server also reports the end of a finished response as a disconnect.
            if not finished.is_set():
                disconnected.set()
                handler.cancel()
            return


async def _error(send: Send, status: int, message: str, code: str, *, retry: bool = False) -> None:
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    if status >= 500:
        error["type"] = "service_unavailable"
    data = json.dumps({"error": error}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    if retry:
        headers.append((b"retry-after", b"1"))
    # The connection is not reused: an unread body would be taken for the next request, and a closing
    # server takes no more.
    headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def _route(scope: Scope) -> str:
    return str(getattr(scope.get("route"), "path", "unmatched"))


ROUTING_HEADERS = {
    b"x-router-request-id": "request",
    b"x-router-rule": "rule",
    b"x-router-decision": "decision",
    b"x-router-target": "target",
    b"x-router-confidence": "confidence",
    b"x-router-task": "task",
    b"x-router-fallback": "fallback",
}
"""The response headers that say how a request was routed, and their names in its log line."""


def _log_request(scope: Scope, route: str, status: int, headers: Any, arrived: float) -> None:
    """One INFO line per request, in place of the server's access log: method, route (its template, never
    the URL), status, milliseconds to the end of the response, and for a routed answer how it was routed
    (read from its x-router headers, so the line says what the client was told). Never a prompt or a key."""
    if not log.isEnabledFor(logging.INFO):
        return
    said = {name: value for name, value in headers if name in ROUTING_HEADERS}
    routed = "".join(
        f" {label}={said[name].decode('latin-1')}" for name, label in ROUTING_HEADERS.items() if name in said
    )
    elapsed = 1000 * (time.perf_counter() - arrived)
    log.info("%s %s %d %.1f ms%s", scope.get("method"), route, status, elapsed, routed)
