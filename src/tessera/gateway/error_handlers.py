"""Every error a request meets leaves as an OpenAI error body, with its status and id.

Its own module because two paths answer errors: FastAPI's exception handlers, and the
fast inference path (``fast_routes``), which ``create_app`` binds to
:func:`tessera_error_response` so that both answer and count alike.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tessera.errors import TesseraError, error_headers, openai_error_body
from tessera.gateway.metrics import GatewayMetrics
from tessera.gateway.request_body import invalid_parameter
from tessera.gateway.responses import route_path


def _error_response(request: Request, error: TesseraError) -> JSONResponse:
    return JSONResponse(
        openai_error_body(error),
        status_code=error.status_code,
        headers={
            "x-request-id": request.scope.get("state", {}).get("request_id", ""),
            **error_headers(error),
        },
    )


def tessera_error_response(
    metrics: GatewayMetrics, request: Request, exc: TesseraError
) -> JSONResponse:
    metrics.requests.labels(endpoint=route_path(request), status=str(exc.status_code)).inc()
    return _error_response(request, exc)


def install_error_handlers(app: FastAPI, metrics: GatewayMetrics) -> None:
    """Our errors and the framework's become OpenAI bodies; anything else is a 500 from
    ``RequestIdAndBodyLimit``, which logs one line without the client's content."""

    @app.exception_handler(TesseraError)
    async def tessera_error(request: Request, exc: TesseraError) -> JSONResponse:
        return tessera_error_response(metrics, request, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error_response(request, invalid_parameter(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = TesseraError(str(exc.detail))
        error.status_code = exc.status_code
        error.error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        error.code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        response = _error_response(request, error)
        response.headers.update(exc.headers or {})  # e.g. Allow on a 405
        return response
