"""ASGI middleware: request ids on every response, a hard cap on body size, and the last
stop for errors nobody expected.

Pure ASGI (no BaseHTTPMiddleware) so streaming responses and client disconnects pass
through untouched. An unexpected exception costs microseconds and one log line (its type,
where it was raised, the route and the request id: never its message, which may quote
what the client sent), an OpenAI-shaped 500, and at most one stack line per
:data:`STACK_EVERY_S`; nothing renders a traceback on the event loop per request.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import secrets
import time
import traceback
from types import TracebackType
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tessera.errors import PayloadTooLarge, TesseraError, openai_error_body
from tessera.log_format import REQUEST_ID

log = logging.getLogger("tessera.gateway")
STACK_EVERY_S = 60.0
INTERNAL_ERROR = "The gateway hit an internal error; retry the request."


_ID_KEY = secrets.token_bytes(32)  # this process's: ids never repeat across restarts
_id_counter = itertools.count()


def new_request_id() -> str:
    """``req_`` and 32 hex characters: the time in milliseconds (12), then 20 nobody can
    predict (a keyed BLAKE2b of a counter: 80 bits as random as ``secrets.token_hex`` to
    anyone without the key, with no system call per request, which on the event loop
    handed the GIL to the database thread every time).

    Time first, so ids sort by when they were made, as UUIDv7 does: the indexes keyed by
    request id (the request log's, the receipts', the journal's references) take each new
    id at their right edge instead of on a random page, so a commit writes one or two
    pages of each instead of one per request, and a large table is not read back from disk
    page by page to insert into it (bench/request_ids.py)."""
    counter = next(_id_counter).to_bytes(8, "little")
    now = int(time.time() * 1000) & 0xFFFF_FFFF_FFFF  # 48 bits: until the year 10889
    return f"req_{now:012x}" + hashlib.blake2b(counter, key=_ID_KEY, digest_size=10).hexdigest()


class RequestIdAndBodyLimit:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        REQUEST_ID.set(request_id)  # this request's task and what it starts: its log lines
        scope.setdefault("state", {})["request_id"] = request_id
        header_id = (b"x-request-id", request_id.encode())
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"x-request-id" for k, _ in headers):
                    headers.append(header_id)
                message = {**message, "headers": headers}
            await send(message)

        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await _too_large(send_with_id, self.max_body_bytes)
            return

        seen = 0

        async def counted_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise PayloadTooLarge(_too_large_text(self.max_body_bytes), param=None)
            return message

        try:
            await self.app(scope, counted_receive, send_with_id)
        except TesseraError as exc:  # raised outside a route (e.g. reading a streamed body)
            if not started:
                await _send_error(send_with_id, exc)
        except Exception as exc:
            self.unexpected(exc, scope, request_id)
            if not started:
                await _send_error(send_with_id, TesseraError(INTERNAL_ERROR))

    _stack_logged_at = -STACK_EVERY_S

    def unexpected(self, exc: Exception, scope: Scope, request_id: str) -> None:
        """One line for an error nobody expected; its frames at most once a minute."""
        route = getattr(scope.get("route"), "path", None) or "unmatched route"
        log.error(
            "unexpected %s at %s on %s %s (request %s)",
            type(exc).__name__,
            _raised_at(exc.__traceback__),
            scope.get("method", "?"),
            route,
            request_id,
        )
        now = time.monotonic()
        if now - self._stack_logged_at >= STACK_EVERY_S:
            self._stack_logged_at = now
            log.error("stack of %s (request %s): %s", type(exc).__name__, request_id, _frames(exc))


def _raised_at(tb: TracebackType | None) -> str:
    """``file:line`` of the innermost frame, without reading any source file."""
    if tb is None:
        return "?"
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    return f"{code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno} in {code.co_name}"


def _frames(exc: BaseException, limit: int = 40) -> str:
    """The innermost ``limit`` frames as ``file:line in function``, outermost first; no
    source lines (no file reads) and no exception message (it may quote the client)."""
    stack = traceback.StackSummary.extract(traceback.walk_tb(exc.__traceback__), lookup_lines=False)
    return " > ".join(
        f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} in {f.name}" for f in list(stack)[-limit:]
    )


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _too_large_text(limit: int) -> str:
    return f"Request body is larger than this gateway's limit of {limit} bytes."


async def _too_large(send: Any, limit: int) -> None:
    await _send_error(send, PayloadTooLarge(_too_large_text(limit)))


async def _send_error(send: Any, error: TesseraError) -> None:
    body = json.dumps(openai_error_body(error)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status_code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
