"""The gateway's HTTP server: uvicorn over httptools, with limits on what a stranger may send.

Stock uvicorn keeps an unterminated request head in memory as fast as it arrives, answers
a head of any size or header count, and times nothing before its first response, so a few
connections can take the gateway's memory or sit on its sockets forever. Per connection,
:class:`LimitedHttpToolsProtocol` adds:

- a head (request line and headers) of at most ``max_header_bytes`` bytes and
  ``max_header_count`` headers, else 431 and close;
- a head that arrives within ``header_timeout_s`` of the connection opening, or of the
  first byte of the next request on a kept-alive connection, else 408 and close;
- a body that arrives within ``body_timeout_s`` of its head, plus one second for every
  ``body_min_rate_bytes_per_s`` bytes received (the rule of Apache's mod_reqtimeout), else
  408 and close; while the application leaves received bytes unread the clock restarts,
  since the client is then waiting on us;
- at most as many framing bytes as body bytes (plus one head's worth), so a chunked body
  cannot carry endless trailers or one-byte chunks;
- idle kept-alive connections closed after ``keepalive_timeout_s`` (uvicorn's own timer);
- at most ``max_connections`` open connections, HTTP and WebSocket together: one more is
  answered 503 and closed as soon as it is accepted, before it can cost anything.

Only the reading of a request is timed. A response still being written (a long SSE
stream) and an upgraded WebSocket are never cut off by these timers. Timers cost nothing
on the fast path: one per connection for its first head, and one more only when a head or
body does not arrive in the read that began it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tessera.config import GatewaySettings
from tessera.errors import InvalidRequest, NoCapacity, TesseraError, openai_error_body
from tessera.gc_tuning import settle_heap

log = logging.getLogger(__name__)

_REFUSAL_LOG_INTERVAL_S = 10.0  # at most one "refusing connections" line this often

_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What one connection may cost; see the module docstring for each rule."""

    max_header_bytes: int = 32 * 1024
    max_header_count: int = 100
    header_timeout_s: float = 10.0
    body_timeout_s: float = 20.0
    body_min_rate_bytes_per_s: int = 1_000
    max_connections: int = 1_000

    @classmethod
    def of(cls, settings: GatewaySettings) -> HttpLimits:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            max_header_count=settings.max_header_count,
            header_timeout_s=settings.header_timeout_s,
            body_timeout_s=settings.body_timeout_s,
            body_min_rate_bytes_per_s=settings.body_min_rate_bytes_per_s,
            max_connections=settings.max_connections,
        )


class _HeadRefused(Exception):
    """Raised inside a parser callback to stop parsing a head that broke a limit."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with :class:`HttpLimits` (set per server by
    :func:`protocol_class`)."""

    limits: ClassVar[HttpLimits] = HttpLimits()
    _refusal_logged_s: ClassVar[float] = float("-inf")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # "head": reading a request head; "body": its body; "idle": between requests;
        # "done": refused, closing or upgraded: nothing more of ours to do.
        self._reading: Literal["head", "body", "idle", "done"] = "head"
        self._timer: asyncio.TimerHandle | None = None
        self._started_s = 0.0  # when the current head or body began
        self._head_bytes = 0
        self._body_bytes = 0
        self._raw_body_bytes = 0
        self._refusal: tuple[int, TesseraError] | None = None

    # ---------------------------------------------------------------- connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._started_s = self.loop.time()
        if len(self.connections) > self.limits.max_connections:
            now = self._started_s
            if now - LimitedHttpToolsProtocol._refusal_logged_s >= _REFUSAL_LOG_INTERVAL_S:
                LimitedHttpToolsProtocol._refusal_logged_s = now
                log.warning(
                    "refusing connections: %d open, the limit is %d (max_connections)",
                    len(self.connections) - 1,
                    self.limits.max_connections,
                )
            self._refuse(
                503,
                NoCapacity(
                    "This gateway has too many open connections; try again shortly.",
                    code="too_many_connections",
                ),
            )
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._reading = "done"
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._reading == "done":
            return
        if self._reading == "idle":  # the next request on a kept-alive connection
            self._reading = "head"
            self._head_bytes = 0
            self._started_s = self.loop.time()
        if self._reading == "head":
            room = self.limits.max_header_bytes - self._head_bytes
            if len(data) > room:
                # The head may still end within ``room``: parse that much, and the rest
                # only if it did.
                self._head_bytes += room
                super().data_received(data[:room])
                if self._reading == "head":
                    self._refuse(431, _too_large(self.limits))
                elif self._reading != "done":
                    self.data_received(data[room:])
                return
            self._head_bytes += len(data)
        elif self._reading == "body":
            self._raw_body_bytes += len(data)
        super().data_received(data)
        if self._reading == "body":
            framing = self._raw_body_bytes - self._body_bytes
            if framing > self._body_bytes + self.limits.max_header_bytes:
                self._refuse(400, InvalidRequest("Request body framing or trailers too large."))
            elif self._timer is None:
                self._arm_body_timer()
        elif self._reading == "head" and self._timer is None:
            self._arm_head_timer()

    def send_400_response(self, msg: str) -> None:
        if self._refusal is not None:  # a limit stopped the parser: say which
            self._refuse(*self._refusal)
        else:
            self._reading = "done"
            self._cancel_timer()
            super().send_400_response(msg)

    def handle_websocket_upgrade(self) -> None:
        self._reading = "done"  # the WebSocket protocol owns the connection from here
        self._cancel_timer()
        super().handle_websocket_upgrade()

    # ---------------------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._reading == "idle":  # a pipelined request in the same read as the last
            self._reading = "head"
            self._head_bytes = 0
            self._started_s = self.loop.time()

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self.headers) >= self.limits.max_header_count:
            self._refusal = (
                431,
                InvalidRequest(
                    f"More than {self.limits.max_header_count} request headers.",
                    code="request_header_fields_too_large",
                ),
            )
            raise _HeadRefused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._cancel_timer()
        self._reading = "body"
        self._started_s = self.loop.time()
        self._body_bytes = 0
        self._raw_body_bytes = 0
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._cancel_timer()
        self._reading = "idle"
        super().on_message_complete()

    # ---------------------------------------------------------------- timers

    def _arm_head_timer(self) -> None:
        deadline = self._started_s + self.limits.header_timeout_s
        self._timer = self.loop.call_at(deadline, self._head_timed_out)

    def _arm_body_timer(self) -> None:
        self._timer = self.loop.call_at(self._body_deadline(), self._body_timed_out)

    def _body_deadline(self) -> float:
        rate = self.limits.body_min_rate_bytes_per_s
        credit = self._body_bytes / rate if rate else 0.0
        return self._started_s + self.limits.body_timeout_s + credit

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timed_out(self) -> None:
        self._timer = None
        if self._reading != "head" or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined head while a response is still being written: finish that
            # response, then close.
            self.cycle.keep_alive = False
            self.flow.pause_reading()
            return
        self._refuse(
            408,
            InvalidRequest(
                f"The request head did not arrive within {self.limits.header_timeout_s:g}s.",
                code="request_timeout",
            ),
        )

    def _body_timed_out(self) -> None:
        self._timer = None
        if self._reading != "body" or self.transport.is_closing():
            return
        now = self.loop.time()
        if self.flow.read_paused:  # the application has not taken what arrived yet
            self._started_s, self._body_bytes, self._raw_body_bytes = now, 0, 0
        if now < self._body_deadline():
            self._arm_body_timer()
            return
        self._refuse(
            408,
            InvalidRequest(
                f"The request body arrived slower than {self.limits.body_min_rate_bytes_per_s} "
                f"bytes a second after {self.limits.body_timeout_s:g}s.",
                code="request_timeout",
            ),
        )

    # ---------------------------------------------------------------- refusing

    def _refuse(self, status: int, error: TesseraError) -> None:
        """Answer ``status`` with ``error`` (unless a response is already under way) and
        close the connection."""
        self._reading = "done"
        self._cancel_timer()
        if self.transport.is_closing():
            return
        if self.cycle is None or not self.cycle.response_started:
            body = json.dumps(openai_error_body(error)).encode()
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                % (status, _REASONS[status], len(body), body)
            )
        if self.cycle is not None:  # the application's receive and send now see a disconnect
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.close()


def _too_large(limits: HttpLimits) -> InvalidRequest:
    return InvalidRequest(
        f"The request head is larger than this gateway's limit of {limits.max_header_bytes} bytes.",
        code="request_header_fields_too_large",
    )


def protocol_class(limits: HttpLimits) -> type[LimitedHttpToolsProtocol]:
    """A protocol class for one server, bound to ``limits``."""
    return type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,), {"limits": limits})


def server_config(app: Any, settings: GatewaySettings) -> uvicorn.Config:
    """The uvicorn configuration that serves ``app`` under ``settings``' limits."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=protocol_class(HttpLimits.of(settings)),
        log_level="warning",
        ws_max_size=settings.ws_max_frame_bytes,
        ws_per_message_deflate=False,  # small JSON frames: deflate costs more than it saves
        timeout_keep_alive=settings.keepalive_timeout_s,  # type: ignore[arg-type]
        timeout_graceful_shutdown=5,
    )


class _SettledServer(uvicorn.Server):
    """uvicorn's server, settling the heap once the app has started (see gc_tuning)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        settle_heap()


def serve(app: Any, settings: GatewaySettings) -> None:
    """Serve ``app`` until SIGINT or SIGTERM (the gateway command's main loop)."""
    _SettledServer(server_config(app, settings)).run()
