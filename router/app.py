"""The HTTP surface: OpenAI-compatible endpoints plus health and readiness."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response, StreamingResponse

from policies import Policy
from router.errors import APIError, install_error_handlers
from router.local_model import LocalModel
from router.schemas import ChatCompletionRequest, ScoreRequest
from router.service import Routed, Router
from router.state import StateStore, open_store

log = logging.getLogger("router")


class _State:
    router: Router | None = None
    failure: str | None = None


def create_app(policy: Policy, redis_url: str | None = None) -> FastAPI:
    state = _State()
    store: StateStore = open_store(redis_url)

    def load() -> None:
        try:
            state.router = Router(policy, LocalModel(policy.scorer.model), store)
            log.info("ready: policy '%s', model '%s'", policy.name, policy.scorer.model)
        except Exception as exc:  # reported by /readyz and every request; the log has the traceback
            log.exception("loading the model failed")
            state.failure = f"{type(exc).__name__}: {exc}"

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Load in the background so /healthz answers at once and /readyz tells when the model is in.
        loading = asyncio.create_task(asyncio.to_thread(load))
        yield
        await loading
        if state.router is not None:
            await state.router.close()
        await store.close()

    app = FastAPI(title="confidence-router", lifespan=lifespan)
    install_error_handlers(app)

    def ready_router() -> Router:
        if state.router is None:
            detail = state.failure or "the model is still loading"
            raise APIError(
                503, f"Not ready: {detail}", type="service_unavailable", headers={"Retry-After": "2"}
            )
        return state.router

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if state.router is not None:
            return JSONResponse({"status": "ready"})
        body = {"status": "failed", "error": state.failure} if state.failure else {"status": "loading"}
        return JSONResponse(body, status_code=503)

    @app.get("/v1/models")
    async def models() -> dict[str, object]:
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "confidence-router"}
            for name in policy.model_names
        ]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: ChatCompletionRequest) -> Response:
        routed = await ready_router().route(request)
        if routed.chunks is None:
            return JSONResponse(routed.body, headers=routed.headers())
        return StreamingResponse(_sse(routed), media_type="text/event-stream", headers=routed.headers())

    @app.post("/v1/score")
    async def score(request: ScoreRequest) -> dict[str, object]:
        router = ready_router()
        scored = await router.score(request.plain_messages(), request.max_tokens)
        return {
            "confidence": scored.score.confidence,
            "raw_score": scored.score.raw,
            "scorer": router.scorer.name,
            "scorer_version": router.scorer.version,
            "cached": scored.cached,
            "latency_ms": round(scored.latency_ms, 3),
        }

    return app


async def _sse(routed: Routed) -> AsyncIterator[str]:
    assert routed.chunks is not None
    try:
        async for chunk in routed.chunks:
            yield f"data: {json.dumps(chunk)}\n\n"
    except Exception as exc:  # headers are gone: the stream can only end with an error event
        log.exception("stream %s failed", routed.request_id)
        error = {"message": f"stream failed ({type(exc).__name__})", "type": "upstream_error"}
        yield f"data: {json.dumps({'error': error})}\n\n"
    yield "data: [DONE]\n\n"
