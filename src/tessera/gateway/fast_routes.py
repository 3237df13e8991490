"""The inference endpoints, called straight from the front door instead of through FastAPI.

Under load, the framework's layers around each request (server-error, exception and
body-limit middleware, two exit stacks, the route scan, the exception wrapper) cost the
gateway about a tenth of its CPU per answer, and the three endpoints that take nearly
all traffic need none of them: they parse their own bodies, map their own errors and own
no dependencies. :class:`InferenceRoutes` holds those endpoints by path and runs one with
the same error mapping FastAPI's handlers give (OpenAI-shaped body, metrics counted), so
a response is byte for byte what the routed one was. The routes stay registered with
FastAPI too: the OpenAPI document describes them, and any other method on their paths
(a GET, an OPTIONS) still gets the framework's 405.

:class:`FrontDoorApp` goes one step further out: those POSTs skip the framework's
middleware stack too (its server-error, body-limit and telemetry layers, the last of which
read the process environment on every request, and a send wrapper per layer for every
chunk of a stream). They run under our own request-id and body limit and load shedding
only, which answer every error the way the framework's layers would have.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from tessera.errors import TesseraError

Endpoint = Callable[[Request], Awaitable[Response]]
ErrorResponse = Callable[[Request, TesseraError], Response]


class InferenceRoutes:
    """POST endpoints by path, served without the framework's routing."""

    def __init__(self) -> None:
        self._endpoints: dict[str, tuple[Endpoint, Any]] = {}
        self._app: Any = None
        self._error: ErrorResponse | None = None

    def bind(self, app: Any, on_error: ErrorResponse) -> None:
        """The FastAPI app (``request.app`` for the endpoints) and the error mapping."""
        self._app = app
        self._error = on_error

    def add(self, path: str, endpoint: Endpoint, route: Any) -> None:
        """Serve POST ``path`` with ``endpoint``; ``route`` is the registered APIRoute
        (``scope["route"]``, which labels the metrics)."""
        self._endpoints[path] = (endpoint, route)

    def handler(self, scope: Scope) -> Callable[[Scope, Receive, Send], Awaitable[None]] | None:
        """The fast handler for this request, or None to let the framework route it."""
        if scope.get("method") != "POST" or scope["path"] not in self._endpoints:
            return None
        return self._serve

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint, route = self._endpoints[scope["path"]]
        scope["app"] = self._app
        scope["route"] = route
        request = Request(scope, receive, send)
        try:
            response = await endpoint(request)
        except ClientDisconnect:
            return  # the client left before its body arrived: nobody to answer, nothing held
        except TesseraError as exc:
            assert self._error is not None, "InferenceRoutes.bind was never called"
            response = self._error(request, exc)
        await response(scope, receive, send)


class FrontDoorApp(FastAPI):
    """FastAPI, with the inference POSTs sent straight to ``front`` once it is set.

    ``front`` is the request-id and body limit around the load shedding around
    :class:`InferenceRoutes`; every other request (and the lifespan) takes the framework's
    own path, middleware and all."""

    front: ASGIApp | None = None
    inference: InferenceRoutes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        front, inference = self.front, self.inference
        if (
            front is not None
            and inference is not None
            and scope["type"] == "http"
            and inference.handler(scope) is not None
        ):
            scope["app"] = self
            await front(scope, receive, send)
            return
        await super().__call__(scope, receive, send)
