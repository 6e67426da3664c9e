"""The HTTP surface: OpenAI-compatible endpoints, feedback, metrics, admin reload, health and readiness."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Header
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import Receive, Scope, Send

from policies import Policy
from router.asgi import RequestGuard
from router.errors import APIError, install_error_handlers
from router.feedback import ConflictingFeedback, UnknownRequest
from router.metrics import Metrics
from router.openapi import install_openapi
from router.schemas import ChatCompletionRequest, FeedbackRequest, ScoreRequest
from router.service import Routed
from router.serving import Serving
from router.state import StateStore, StoreUnavailable, open_store

log = logging.getLogger("router")


def create_app(
    policy: Policy,
    redis_url: str | None = None,
    *,
    policy_path: Path | None = None,
    admin_key: str | None = None,
) -> FastAPI:
    """`policy_path`: the file a reload reads (SIGHUP, POST /admin/reload); `admin_key`: the bearer token
    the admin endpoint requires (admin endpoints are off without one)."""
    store: StateStore = open_store(redis_url)
    metrics = Metrics()
    serving = Serving(policy, store, metrics, policy_path)
    metrics.track_queue(lambda: serving.router.batcher.depth if serving.router else 0)
    metrics.track_store(store)
    windows_failing = False  # so that a store that keeps failing logs once, not at every scrape

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Load in the background so /healthz answers at once and /readyz tells when the model is in.
        loading = asyncio.create_task(asyncio.to_thread(serving.load))
        # Signal handlers can only be installed from the main thread (not so for servers run in tests).
        on_main_thread = threading.current_thread() is threading.main_thread()
        if on_main_thread:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, serving.reload_on_signal)
        yield
        if on_main_thread:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        await loading
        await serving.close()
        await store.close()

    app = FastAPI(title="confidence-router", lifespan=lifespan)
    install_error_handlers(app)
    install_openapi(app)

    app.add_middleware(
        RequestGuard,
        max_body_bytes=lambda: (serving.router.policy if serving.router else policy).limits.max_body_bytes,
        responded=lambda route, status: metrics.http_requests.labels(route, str(status)).inc(),
    )

    def require_admin(authorization: str | None) -> None:
        if admin_key is None:
            raise APIError(
                403,
                "Admin endpoints are off: start the server with ROUTER_ADMIN_KEY set",
                type="permission_error",
            )
        if authorization is None or not hmac.compare_digest(
            authorization.encode(), f"Bearer {admin_key}".encode()
        ):
            raise APIError(
                401,
                "Admin endpoints need the header Authorization: Bearer <ROUTER_ADMIN_KEY>",
                type="authentication_error",
                headers={"WWW-Authenticate": "Bearer"},
            )

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        # A replica whose Redis is away keeps serving (from its local state): it stays in.
        if serving.router is not None:
            return JSONResponse({"status": "ready", "store": store.health().mode})
        body = {"status": "failed", "error": serving.failure} if serving.failure else {"status": "loading"}
        return JSONResponse(body, status_code=503)

    @app.get("/v1/models")
    async def models() -> dict[str, object]:
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "confidence-router"}
            for name in (serving.router.policy if serving.router else policy).model_names
        ]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: ChatCompletionRequest) -> Response:
        async with serving.ready().in_use() as router:
            routed = await router.route(request)
        if routed.chunks is None:
            return JSONResponse(routed.body, headers=routed.headers())
        return _Stream(routed, metrics)

    @app.post("/v1/feedback")
    async def feedback(request: FeedbackRequest) -> dict[str, str]:
        async with serving.ready().in_use() as router:
            try:
                recorded = await router.log.feedback(request.request_id, request.label)
            except UnknownRequest as exc:
                metrics.feedback.labels("unknown").inc()
                retention = router.policy.monitoring.decision_ttl_s
                message = (
                    f"No decision is logged for request id {request.request_id}: it is unknown, or older "
                    f"than the decision log keeps decisions ({retention:g} s)"
                )
                raise APIError(
                    404, message, type="not_found_error", param="request_id", code="request_not_found"
                ) from exc
            except ConflictingFeedback as exc:
                metrics.feedback.labels("conflict").inc()
                raise APIError(409, str(exc), param="request_id", code="feedback_conflict") from exc
            except StoreUnavailable as exc:  # not acknowledged, so that nothing acknowledged is lost
                raise APIError(
                    503,
                    "Feedback not recorded: the state store is unreachable and this replica cannot keep "
                    "more writes for it; retry later",
                    type="service_unavailable",
                    headers={"Retry-After": "1"},
                ) from exc
        metrics.feedback.labels(request.outcome if recorded else "duplicate").inc()
        return {"request_id": request.request_id, "status": "recorded" if recorded else "duplicate"}

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        nonlocal windows_failing
        if serving.router is not None:
            try:
                await serving.router.observe_windows()
                windows_failing = False
            except Exception:  # the window gauges keep their last values; everything else still renders
                if not windows_failing:
                    log.debug("computing the window gauges failed", exc_info=True)
                windows_failing = True
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/reload")
    async def admin_reload(authorization: str | None = Header(None)) -> dict[str, str | None]:
        require_admin(authorization)
        router = await serving.reload()
        return {
            "status": "reloaded",
            "policy": router.policy.name,
            "scorer_version": router.scorer.version,
            "calibrator": router.policy.scorer.calibrator,
        }

    @app.post("/v1/score")
    async def score(request: ScoreRequest) -> dict[str, object]:
        async with serving.ready().in_use() as router:
            # Never from the shared cache: a hit would tell the caller that someone else asked this.
            scored = await router.score(request.plain_messages(), request.max_tokens, cached=False)
        return {
            "confidence": scored.confidence[router.scorer.primary],
            "raw_score": scored.raw[router.scorer.primary],
            "confidences": scored.confidence,
            "raw_scores": scored.raw,
            "scorer": router.scorer.method,
            "scorer_version": router.scorer.version,
            "latency_ms": round(scored.latency_ms, 3),
        }

    return app


class _Stream(StreamingResponse):
    """Server-sent events of a routed answer; what produces them is released however the response ends
    (finished, failed, or cancelled before its first event, when the client left)."""

    def __init__(self, routed: Routed, metrics: Metrics) -> None:
        super().__init__(_sse(routed, metrics), media_type="text/event-stream", headers=routed.headers())
        self.routed = routed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            assert self.routed.chunks is not None
            await self.routed.chunks.aclose()


async def _sse(routed: Routed, metrics: Metrics) -> AsyncIterator[str]:
    assert routed.chunks is not None
    try:
        async for chunk in routed.chunks:
            yield f"data: {json.dumps(chunk)}\n\n"
    except Exception as exc:  # headers are gone: the stream can only end with an error event
        log.exception("stream %s failed", routed.request_id)
        metrics.upstream_failed(routed.decision.target or "none", "stream_cut")
        said = exc.message if isinstance(exc, APIError) else f"stream failed ({type(exc).__name__})"
        error = {"message": said, "type": "upstream_error", "param": None, "code": "stream_cut"}
        yield f"data: {json.dumps({'error': error})}\n\n"
    yield "data: [DONE]\n\n"
