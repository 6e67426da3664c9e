"""Errors in the OpenAI error shape, so that SDKs raise their usual exceptions."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

log = logging.getLogger("router")


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def _validation_error(exc: RequestValidationError) -> APIError:
    first: dict[str, Any] = exc.errors()[0]
    if first["type"] == "json_invalid":
        return APIError(400, f"Malformed JSON body: {first.get('ctx', {}).get('error', 'invalid JSON')}")
    # FastAPI prefixes body locations with "body"; clients know the field by its own path.
    loc = [str(step) for step in first["loc"] if step != "body"]
    param = ".".join(loc) or None
    prefix = f"{param}: " if param else ""
    return APIError(400, f"Invalid request: {prefix}{first['msg']}", param=param, code="invalid_value")


def install_error_handlers(app: FastAPI) -> None:
    async def api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, APIError)
        return exc.response()

    async def invalid(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return _validation_error(exc).response()

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return APIError(exc.status_code, str(exc.detail), type=kind).response()

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not the client's doing: OpenAI's shape and words for it, never the exception's text (it may
        # quote the request). The log has the traceback, and the route, not the body.
        route = getattr(request.scope.get("route"), "path", request.url.path)
        log.error("unhandled %s on %s %s", type(exc).__name__, request.method, route, exc_info=exc)
        message = "The server had an error while processing your request"
        return APIError(500, message, type="server_error").response()

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http_error)
    # Starlette's outermost middleware runs this for any other exception (then re-raises it to the server).
    app.add_exception_handler(Exception, unexpected)
