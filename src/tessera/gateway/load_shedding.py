"""The gateway's shell around market/load_shedding: measure the event loop, refuse fast.

:class:`LagMonitor` sleeps ``sample_s`` at a time and feeds the gauge how late it woke.
:class:`ShedOverload` is pure ASGI middleware in front of the inference endpoints: while
the gauge says overloaded, a new request is answered 503 ``gateway_overloaded`` with
``Retry-After`` before its key is looked up or its body parsed, so a refusal costs a small
fraction of an answer and the loop catches up. Nothing else is refused: health, metrics,
accounts and the providers' WebSocket keep working under any load.

The connection stays open (the body, already read with the head in all but huge
requests, is discarded by the server), so a client that retries later reuses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tessera.errors import Overloaded, openai_error_body
from tessera.gateway.fast_routes import InferenceRoutes
from tessera.gateway.metrics import GatewayMetrics
from tessera.market.load_shedding import LoadGauge, Shed

log = logging.getLogger("tessera.gateway.load")

SHED_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})
_LOG_EVERY_S = 10.0


class LagMonitor:
    """A task that samples the event loop's lag into ``gauge`` (and the metrics)."""

    def __init__(self, gauge: LoadGauge, metrics: GatewayMetrics, sample_s: float) -> None:
        self.gauge = gauge
        self.metrics = metrics
        self.sample_s = sample_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="loop-lag-monitor")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(self.sample_s)
            self.gauge.observe(loop.time() - started - self.sample_s)
            self.metrics.loop_lag.set(self.gauge.lag_s)


class ShedOverload:
    """Refuse inference requests at the door while the gateway is overloaded."""

    def __init__(
        self,
        app: ASGIApp,
        gauge: LoadGauge,
        metrics: GatewayMetrics,
        routes: InferenceRoutes | None = None,
    ) -> None:
        self.app = app
        self.gauge = gauge
        self.metrics = metrics
        self.routes = routes  # admitted requests go straight to their endpoint
        self.in_flight = 0
        self.waiting = 0  # admitted, no answer begun yet
        self._logged_s = -_LOG_EVERY_S

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in SHED_PATHS:
            await self.app(scope, receive, send)
            return
        clock = asyncio.get_running_loop().time
        shed = self.gauge.refusal(self.in_flight, self.waiting, clock())
        if shed is not None:
            await self._refuse(send, shed)
            return
        handler = self.routes.handler(scope) if self.routes is not None else None
        answered = False

        async def send_answer(message: Message) -> None:
            nonlocal answered
            if not answered and message["type"] == "http.response.start":
                answered = True
                self.waiting -= 1
                self.gauge.answered(clock())
            await send(message)

        self.in_flight += 1
        self.waiting += 1
        try:
            await (handler or self.app)(scope, receive, send_answer)
        finally:
            self.in_flight -= 1
            if not answered:
                self.waiting -= 1

    async def _refuse(self, send: Send, shed: Shed) -> None:
        limit = self.waiting if shed.reason == "queue" else self.gauge.max_in_flight
        message = shed.message(lag_s=self.gauge.lag_s, limit=limit)
        reason, retry_after_s = shed.reason, shed.retry_after_s
        self.metrics.shed.labels(reason=reason).inc()
        now = time.monotonic()
        if now - self._logged_s >= _LOG_EVERY_S:
            self._logged_s = now
            log.warning("shedding load (%s): %s", reason, message)
        body = json.dumps(openai_error_body(Overloaded(message, retry_after_s=retry_after_s)))
        payload = body.encode()
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"retry-after", str(retry_after_s).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})
