"""How a served request leaves: its headers, and a payment settled only once it was sent.

The client's leaving cancels the work (``until_disconnect``) or the stream; the answer's
hold is then released, not charged. Kept apart from the routes because this is where
delivery and payment meet, and both the routes and the error handlers label by route.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tessera.gateway.header_values import header_value
from tessera.gateway.metrics import GatewayMetrics
from tessera.gateway.request_context import Served


async def until_disconnect(request: Request, work: Awaitable[Served]) -> Served | None:
    """Run ``work``, cancelling it (and so the job) if the client goes away first.

    The work runs in this task (a task of its own and a wait on both cost more than the
    rest of a short request's bookkeeping); a watcher cancels this task when the client
    disconnects, and that cancellation is turned back into a None answer here.
    """
    current = asyncio.current_task()
    assert current is not None
    left = False

    async def watch() -> None:
        nonlocal left
        while (await request.receive())["type"] != "http.disconnect":
            pass
        left = True
        current.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        served = await work
    except asyncio.CancelledError:
        if not left:
            raise  # cancelled from outside (a shutdown): not ours to swallow
        current.uncancel()
        return None
    finally:
        watcher.cancel()
    if not left:
        return served
    # The answer and the client's leaving arrived together: it was never sent. (This task
    # may still carry the watcher's cancellation, so the stream's cleanup runs apart.)
    current.uncancel()
    if served.settle is not None:
        served.settle(False)
    if served.finish is not None:
        finishing = asyncio.ensure_future(served.finish())
        _finishing.add(finishing)
        finishing.add_done_callback(_finishing.discard)
    return None


_finishing: set[asyncio.Future[None]] = set()  # cleanups running apart (kept from the GC)


def route_path(request: Request) -> str:
    """The matched route's path: a bounded label set, unlike raw URLs."""
    route = request.scope.get("route")
    return getattr(route, "path", "other")


def respond(request: Request, served: Served | None, metrics: GatewayMetrics) -> Response:
    path = route_path(request)
    if served is None:
        metrics.requests.labels(endpoint=path, status="499").inc()
        return Response(status_code=499)
    headers = {
        "x-request-id": request.scope["state"]["request_id"],
        "x-tessera-provider": served.provider_id,
        "x-tessera-max-cost": str(served.held),
    }
    if served.route is not None:
        headers["x-tessera-route"] = header_value(served.route)
    metrics.requests.labels(endpoint=path, status="200").inc()
    if served.stream is not None:
        headers["cache-control"] = "no-cache"
        return SettlingStreamingResponse(
            served.stream, served.finish, media_type="text/event-stream", headers=headers
        )
    headers["x-tessera-cost"] = str(served.cost or 0)
    try:
        return SettledJSONResponse(served.body, served.settle, headers=headers)
    except BaseException:
        if served.settle is not None:
            served.settle(False)  # the answer could not even be rendered: not charged
        raise


class SettledJSONResponse(JSONResponse):
    """A whole answer that is paid for only once it was handed to the connection.

    ``settle(True)`` runs after the last body byte was sent without error; an answer
    whose sending failed (the server refused a header, the connection broke) settles
    with False, and its hold is released. A client that vanished in the instant between
    the gateway's last check and the write is still charged: no server can tell that.
    """

    def __init__(self, content: Any, settle: Callable[[bool], None] | None, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._settle = settle

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        delivered = False
        try:
            await super().__call__(scope, receive, send)
            delivered = True
        finally:
            if self._settle is not None:
                settle, self._settle = self._settle, None
                settle(delivered)


class SettlingStreamingResponse(StreamingResponse):
    """A stream that settles its payment once sent, even if its body never started.

    The client's leaving is watched by one plain task that cancels this one, as
    ``until_disconnect`` does, instead of Starlette's task group (an anyio task group and
    cancel scope per stream, a sizeable share of a short stream's cost): the body's
    generator then sees the cancellation at its ``await`` and settles what was sent.
    """

    def __init__(
        self,
        content: AsyncIterator[bytes],
        finish: Callable[[], Awaitable[None]] | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(content, **kwargs)
        self._finish = finish

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        current = asyncio.current_task()
        assert current is not None
        left = False

        async def watch() -> None:
            nonlocal left
            while (await receive())["type"] != "http.disconnect":
                pass
            left = True
            current.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await self.stream_response(send)
        except asyncio.CancelledError:
            if not left:
                raise  # cancelled from outside (a shutdown): not ours to swallow
        finally:
            watcher.cancel()
            finish = self._finish
            if left:
                current.uncancel()
            if finish is not None and not left:
                await finish()
            elif finish is not None:
                # The client left; this task may still carry the watcher's cancellation
                # (the stream ended in the same instant), so the cleanup runs apart.
                finishing = asyncio.ensure_future(finish())
                _finishing.add(finishing)
                finishing.add_done_callback(_finishing.discard)
