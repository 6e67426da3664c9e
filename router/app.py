"""The HTTP surface: OpenAI-compatible endpoints, feedback, metrics, admin reload, health and readiness."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import signal
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import Receive, Scope, Send

from policies import Policy
from router.access.gate import Caller, Gate
from router.access.keys import KeyTable
from router.access.limits import Limits, Verdict
from router.asgi import RequestGuard
from router.embeddings import EmbeddingRequest, embed, embeddings_target
from router.errors import APIError, install_error_handlers
from router.feedback import ConflictingFeedback, UnknownRequest
from router.metrics import Metrics
from router.openapi import install_openapi
from router.responses import endpoint as responses
from router.responses.request import ResponsesRequest
from router.schemas import ChatCompletionRequest, FeedbackRequest, ScoreRequest
from router.serving import Serving
from router.stages.sessions import session_of
from router.stages.shaping import Routed
from router.state import Eviction, StateStore, StoreUnavailable, open_store, read_eviction
from router.text_completions import CompletionRequest, as_text, chat_request

log = logging.getLogger("router")


def create_app(
    policy: Policy,
    redis_url: str | None = None,
    *,
    policy_path: Path | None = None,
    admin_key: str | None = None,
    watch_policy_s: float = 0.0,
) -> FastAPI:
    """`policy_path`: the file a reload reads (SIGHUP, POST /admin/reload, and a change of its content
    every `watch_policy_s` seconds when that is above 0); `admin_key`: the bearer token the admin endpoint
    requires (admin endpoints are off without one)."""
    store: StateStore = open_store(redis_url)
    client = getattr(store, "client", None)  # Redis's, when the state is shared
    if policy.auth == "required" and client is None:
        raise ValueError("auth: required needs Redis (--redis-url): the keys live there")
    keys = KeyTable(client) if client is not None else None
    limits = Limits(store, client)
    gate = Gate(keys, limits, admin_key)
    metrics = Metrics()
    serving = Serving(policy, store, metrics, policy_path, watch_policy_s)
    metrics.track_queue(lambda: serving.router.scoring.batcher.depth if serving.router else 0)
    metrics.track_store(store)
    windows_failing = False  # so that a store that keeps failing logs once, not at every scrape
    eviction: Eviction | None = None  # whether Redis may evict what must not vanish, read at start-up

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        nonlocal eviction
        # Load in the background so /healthz answers at once and /readyz tells when the model is in.
        loading = asyncio.create_task(asyncio.to_thread(serving.load))
        serving.watch_policy()
        if keys is not None:
            await keys.start()
        if client is not None:
            eviction = await read_eviction(client)
            eviction.report()
        # Signal handlers can only be installed from the main thread (not so for servers run in tests).
        on_main_thread = threading.current_thread() is threading.main_thread()
        if on_main_thread:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, serving.reload_on_signal)
        yield
        try:
            if on_main_thread:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            await loading
            await serving.close()
            if keys is not None:
                await keys.close()
        finally:
            # Whatever failed before: the debits still on their way may become writes the store keeps,
            # and closing the store writes what it keeps to Redis (router/state/resilient.py).
            await limits.close()
            await store.close()

    # install_openapi serves the document and Swagger UI behind the key check (FastAPI's own pages would be
    # open to anyone); no ReDoc page: it fetches the document from the browser, which sends no key.
    app = FastAPI(
        title="confidence-router", lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None
    )
    install_error_handlers(app)
    install_openapi(app, guard=[Depends(_caller)])

    app.add_middleware(
        RequestGuard,
        max_body_bytes=lambda: (serving.router.policy if serving.router else policy).limits.max_body_bytes,
        responded=lambda route, status: metrics.http_requests.labels(route, str(status)).inc(),
    )

    def caller(authorization: str | None) -> Caller | None:
        """Who calls, when the policy in force requires keys (None when it does not)."""
        current = serving.router.policy if serving.router else policy
        if current.auth == "off":
            return None
        try:
            return gate.identify(authorization)
        except APIError:
            metrics.auth_failures.labels("missing" if not authorization else "unknown").inc()
            raise

    app.state.caller = caller

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
            ready: dict[str, object] = {"status": "ready", "store": store.health().mode}
            if eviction is not None:
                ready["eviction"] = eviction.readiness()
            return JSONResponse(ready)
        body = {"status": "failed", "error": serving.failure} if serving.failure else {"status": "loading"}
        return JSONResponse(body, status_code=503)

    @app.get("/v1/models")
    async def models(_: Authorized) -> dict[str, object]:
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "confidence-router"}
            for name in (serving.router.policy if serving.router else policy).model_names
        ]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(
        request: ChatCompletionRequest,
        http: Request,
        who: Authorized,
        x_router_feedback: FeedbackAsked = None,
    ) -> Response:
        routed, headers = await route(request, http, who, x_router_feedback == "keep")
        return _answer(routed, metrics, headers)

    @app.post("/v1/completions", response_model=None)
    async def completions(
        request: CompletionRequest, http: Request, who: Authorized, x_router_feedback: FeedbackAsked = None
    ) -> Response:
        routed, headers = await route(chat_request(request), http, who, x_router_feedback == "keep")
        return _answer(as_text(routed), metrics, headers)

    async def route(
        request: ChatCompletionRequest, http: Request, who: Caller | None, feedback: bool
    ) -> tuple[Routed, dict[str, str]]:
        """The routed answer, and the headers it goes with (the decision's, the caller's limits')."""
        async with serving.ready().in_use() as router:
            verdict = await admitted(who, request.model)
            session = session_of(router.policy, http.headers, request.user)
            routed = await router.route(
                request, tenant_of(who), spent(who), feedback=feedback, session=session
            )
        return routed, routed.headers() | (verdict.headers() if verdict else {})

    @app.post("/v1/responses", response_model=None)
    async def create_response(
        request: ResponsesRequest, http: Request, who: Authorized, x_router_feedback: FeedbackAsked = None
    ) -> Response:
        async with serving.ready().in_use() as router:
            verdict = await admitted(who, request.model)
            session = session_of(router.policy, http.headers, request.user)
            created = await responses.create(
                router,
                request,
                tenant_of(who),
                spent(who),
                feedback=x_router_feedback == "keep",
                session=session,
            )
        headers = created.routed.headers() | (verdict.headers() if verdict else {})
        if created.stream is not None:
            return _Stream(created.routed, created.stream, headers)
        return Response(created.content, media_type="application/json", headers=headers)

    @app.get("/v1/responses/{response_id}")
    async def get_response(response_id: str, who: Authorized) -> JSONResponse:
        async with serving.ready().in_use() as router:
            await admitted(who, None)
            found = await responses.retrieve(router, tenant_of(who), response_id)
        return JSONResponse(found, headers={"x-router-request-id": uuid.uuid4().hex})

    @app.delete("/v1/responses/{response_id}")
    async def delete_response(response_id: str, who: Authorized) -> JSONResponse:
        async with serving.ready().in_use() as router:
            await admitted(who, None)
            deleted = await responses.delete(router, tenant_of(who), response_id)
        return JSONResponse(deleted, headers={"x-router-request-id": uuid.uuid4().hex})

    def tenant_of(who: Caller | None) -> str | None:
        return None if who is None else who.name

    @app.post("/v1/embeddings", response_model=None)
    async def embeddings(request: EmbeddingRequest, who: Authorized) -> Response:
        async with serving.ready().in_use() as router:
            target = embeddings_target(router.policy)
            # A key's models are checked against the target's name: the request's `model` chooses nothing.
            verdict = await admitted(who, target)
            embedded = await embed(router, target, request, spent(who))
        headers = {"x-router-request-id": uuid.uuid4().hex, "x-router-target": target}
        headers |= verdict.headers() if verdict else {}
        return Response(embedded.content, media_type="application/json", headers=headers)

    def spent(who: Caller | None) -> Callable[[int, float], None] | None:
        """What an answer's tokens and dollars are charged to: the caller's limits, its tenant's metrics."""
        if who is None:
            return None
        tenant = gate.label(who)

        def charge(tokens: int, cost: float) -> None:
            gate.settle(who, tokens, cost)
            metrics.tenant_cost.labels(tenant).inc(cost)

        return charge

    async def admitted(who: Caller | None, model: str | None) -> Verdict | None:
        """`model` None: an endpoint that asks for no model (its limits apply all the same)."""
        if who is None:
            return None
        tenant = gate.label(who)
        try:
            verdict = await gate.admit(who, model)
        except APIError as exc:
            refused = "forbidden" if exc.status == 403 else str(exc.code)
            metrics.tenant_requests.labels(tenant, refused).inc()
            raise
        metrics.tenant_requests.labels(tenant, "admitted").inc()
        return verdict

    @app.post("/v1/feedback")
    async def feedback(request: FeedbackRequest, who: Authorized) -> dict[str, str]:
        async with serving.ready().in_use() as router:
            try:
                recorded = await router.recording.log.feedback(
                    request.request_id,
                    request.label,
                    None if who is None else who.name,
                    any_tenant=who is None or who.admin,
                )
            except UnknownRequest as exc:
                metrics.feedback.labels("unknown").inc()
                monitoring = router.policy.monitoring
                message = (
                    f"No decision is logged for request id {request.request_id}: it was not kept (its "
                    "answer said x-router-decision-kept: false; send x-router-feedback: keep with a request "
                    "to keep its decision), newer decisions of its key replaced it (at most "
                    f"{monitoring.decisions.per_tenant} are kept), or it is unknown, or older than the "
                    f"decision log keeps decisions ({monitoring.decision_ttl_s:g} s)"
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
    async def prometheus_metrics(who: Authorized) -> Response:
        nonlocal windows_failing
        if who is not None:  # every tenant's traffic is in there
            gate.require_admin(who)
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
    async def score(request: ScoreRequest, who: Authorized) -> dict[str, object]:
        async with serving.ready().in_use() as router:
            await admitted(who, None)
            # Never from the shared cache: a hit would tell the caller that someone else asked this.
            scored = await router.score(request.plain_messages(), request.max_tokens, cached=False)
        return {
            "confidence": scored.confidence[router.scorer.primary],
            "raw_score": scored.raw[router.scorer.primary],
            "confidences": scored.confidence,
            "raw_scores": scored.raw,
            "task": scored.family,
            "task_probabilities": scored.task,
            "scorer": router.scorer.method,
            "scorer_version": router.scorer.version,
            "latency_ms": round(scored.latency_ms, 3),
        }

    return app


async def _caller(request: Request, authorization: Annotated[str | None, Header()] = None) -> Caller | None:
    """A dependency, so that it runs before the body is validated: a caller without a key learns nothing
    else about the request. Async though it never waits (a key is looked up in memory): FastAPI runs a
    plain function on its thread pool, a thread hop per request."""
    identify: Callable[[str | None], Caller | None] = request.app.state.caller
    return identify(authorization)


Authorized = Annotated[Caller | None, Depends(_caller)]
FeedbackAsked = Annotated[
    Literal["keep"] | None,
    Header(
        description="`keep`: the client will give feedback on this answer (POST /v1/feedback), so its "
        "decision is kept whatever the policy's sample (x-router-decision-kept says whether it was)"
    ),
]


def _answer(routed: Routed, metrics: Metrics, headers: dict[str, str]) -> Response:
    if routed.chunks is None:
        return JSONResponse(routed.body, headers=headers)
    return _Stream(routed, _sse(routed, metrics), headers)


class _Stream(StreamingResponse):
    """Server-sent events of a routed answer; what produces them is released however the response ends
    (finished, failed, or cancelled before its first event, when the client left)."""

    def __init__(
        self, routed: Routed, events: AsyncIterator[str] | AsyncIterator[bytes], headers: dict[str, str]
    ) -> None:
        super().__init__(events, media_type="text/event-stream", headers=headers)
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
