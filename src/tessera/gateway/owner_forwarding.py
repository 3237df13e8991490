"""Requests only the ledger's owner can answer, forwarded to it from any replica.

Balances, deposits, a request's journal entries, stakes, uptime and the ledger's totals
live in the owner's book (one owner per ledger: store/ledger_owner.py). A load balancer
sends those requests to any replica, so a replica that does not own the ledger forwards
them over the bus (``tsr.v1.ledger.http``) and the owner runs them through its own app,
middleware and all, exactly as if they had come to it; the answer goes back unchanged.
The inference endpoints never come here: they pay through the ledger service instead.

No owner (a takeover under way) is a 503 with Retry-After, never a wrong answer from a
stale copy. A request or answer larger than the bus carries is a clear 413 or 502.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from typing import Any

import httpx
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tessera.gateway.bus import Bus, BusError, BusMessage, BusTimeout, NoResponders, Subscription

log = logging.getLogger("tessera.gateway.owner_forwarding")

SUBJECT = "tsr.v1.ledger.http"
# Each path, and everything under it.
OWNER_PATHS = (
    "/v1/account",
    "/v1/requests",
    "/v1/slashing",
    "/v1/ledger",
    "/v1/providers",
    "/v1/chain",
)
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "upgrade", "host", "content-length"}
TIMEOUT_S = 10.0
RETRY_AFTER_S = 2


def owner_only(path: str) -> bool:
    """Whether ``path`` reads or moves what only the ledger's owner holds."""
    if path == "/v1/providers/connect":
        return False
    return any(path == p or path.startswith(p + "/") for p in OWNER_PATHS)


class ForwardToOwner:
    """ASGI middleware on every replica: owner-only requests go to the owner while this
    replica does not own the ledger (``is_owner`` says, at each request)."""

    def __init__(
        self,
        app: ASGIApp,
        bus: Callable[[], Bus | None],
        is_owner: Callable[[], bool],
        max_body_bytes: int,
    ) -> None:
        self.app = app
        self.bus = bus
        self.is_owner = is_owner
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        bus = self.bus() if scope["type"] == "http" else None
        if bus is None or self.is_owner() or not owner_only(scope["path"]):
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive, self.max_body_bytes)
        if body is None:
            await _answer(send, 413, _error("the request body is too large", "invalid_request"))
            return
        envelope = {
            "method": scope["method"],
            "path": scope["path"],
            "query": scope.get("query_string", b"").decode("latin-1"),
            "headers": [
                [k.decode("latin-1"), v.decode("latin-1")]
                for k, v in scope["headers"]
                if k.decode("latin-1").lower() not in HOP_HEADERS
            ],
            "body": base64.b64encode(body).decode(),
        }
        try:
            reply = await bus.request(SUBJECT, json.dumps(envelope).encode(), TIMEOUT_S)
            answer = json.loads(reply.data)
            status = int(answer["status"])
            headers = [(str(k), str(v)) for k, v in answer["headers"]]
            content = base64.b64decode(answer["body"])
        except (NoResponders, BusTimeout):
            await _answer(
                send,
                503,
                _error(
                    "no gateway replica holds the ledger right now (a takeover is under way); "
                    f"retry in {RETRY_AFTER_S} seconds",
                    "ledger_unavailable",
                ),
                retry_after=RETRY_AFTER_S,
            )
            return
        except (BusError, ValueError, KeyError, TypeError) as exc:
            log.warning("forwarding %s to the ledger's owner failed: %s", scope["path"], exc)
            await _answer(
                send,
                502,
                _error("the replica holding the ledger could not answer; retry", "bad_gateway"),
            )
            return
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            }
        )
        await send({"type": "http.response.body", "body": content})


class OwnerDoor:
    """The owner's side: runs forwarded requests through its own app."""

    def __init__(self, bus: Bus, app: ASGIApp) -> None:
        self.bus = bus
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 0))
        self.client = httpx.AsyncClient(transport=transport, base_url="http://owner")
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        self._subscription = await self.bus.subscribe(SUBJECT, self._serve, queue="ledger")

    async def close(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()
        await self.client.aclose()

    async def _serve(self, message: BusMessage) -> None:
        try:
            envelope = json.loads(message.data)
            method = str(envelope["method"])
            path = str(envelope["path"])
            if not owner_only(path):
                raise ValueError(f"{path} is not answered by the owner")
            response = await self.client.request(
                method,
                path + (f"?{envelope['query']}" if envelope.get("query") else ""),
                headers=[(str(k), str(v)) for k, v in envelope["headers"]],
                content=base64.b64decode(envelope["body"]),
            )
            answer: dict[str, Any] = {
                "status": response.status_code,
                "headers": [
                    [k, v]
                    for k, v in response.headers.multi_items()
                    if k.lower() not in HOP_HEADERS
                ],
                "body": base64.b64encode(response.content).decode(),
            }
            data = json.dumps(answer).encode()
            if len(data) > self.bus.max_payload:
                raise ValueError("the answer is larger than the bus carries")
        except (ValueError, KeyError, TypeError, httpx.HTTPError) as exc:
            log.warning("cannot answer a forwarded request: %s", exc)
            data = json.dumps(
                {
                    "status": 502,
                    "headers": [["content-type", "application/json"]],
                    "body": base64.b64encode(
                        json.dumps(
                            _error(f"the ledger's owner could not answer: {exc}", "bad_gateway")
                        ).encode()
                    ).decode(),
                }
            ).encode()
        await self.bus.respond(message, data)


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _error(message: str, code: str) -> dict[str, Any]:
    kind = "service_unavailable" if code == "ledger_unavailable" else "api_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


async def _answer(
    send: Send, status: int, body: dict[str, Any], retry_after: int | None = None
) -> None:
    headers = [(b"content-type", b"application/json")]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})
