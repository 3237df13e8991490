"""Owner-only requests on a replica without the ledger go to the owner over the bus.

Two ASGI apps on one in-process bus: the "owner" answers /v1/account itself; the "replica"
wraps an app that must never see owner-only paths, and forwards them. Status, headers and
body come back unchanged; no owner is a 503 with Retry-After; other paths stay local.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tessera.gateway.bus import LocalBus
from tessera.gateway.owner_forwarding import ForwardToOwner, OwnerDoor, owner_only


async def _account(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse(
        {
            "who": "owner",
            "auth": request.headers.get("authorization"),
            "query": request.url.query,
            "body": body.decode(),
        },
        status_code=201 if request.method == "POST" else 200,
        headers={"x-owner": "yes"},
    )


async def _local(request: Request) -> JSONResponse:
    return JSONResponse({"who": "replica", "path": request.url.path})


def owner_app() -> Starlette:
    return Starlette(routes=[Route("/v1/account", _account, methods=["GET", "POST"])])


def replica_app(bus: LocalBus, owns: list[bool]) -> ForwardToOwner:
    inner = Starlette(
        routes=[Route("/v1/models", _local), Route("/v1/account", _local, methods=["GET", "POST"])]
    )
    return ForwardToOwner(inner, lambda: bus, lambda: owns[0], max_body_bytes=1024)


@pytest.fixture
async def bus() -> AsyncIterator[LocalBus]:
    bus = LocalBus()
    yield bus
    await bus.close()


def client(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r")  # type: ignore[arg-type]


async def test_owner_only_requests_are_answered_by_the_owner(bus: LocalBus) -> None:
    door = OwnerDoor(bus, owner_app())
    await door.start()
    try:
        async with client(replica_app(bus, [False])) as http:
            got = await http.get("/v1/account?x=1", headers={"Authorization": "Bearer k"})
            posted = await http.post("/v1/account", content=b'{"amount": 5}')
            local = await http.get("/v1/models")
    finally:
        await door.close()
    assert got.status_code == 200 and got.headers["x-owner"] == "yes"
    assert got.json() == {"who": "owner", "auth": "Bearer k", "query": "x=1", "body": ""}
    assert posted.status_code == 201 and json.loads(posted.json()["body"]) == {"amount": 5}
    assert local.json() == {"who": "replica", "path": "/v1/models"}


async def test_the_owner_answers_itself_and_no_owner_is_a_503(bus: LocalBus) -> None:
    owns = [True]
    async with client(replica_app(bus, owns)) as http:
        itself = await http.get("/v1/account")
        owns[0] = False
        nobody = await http.get("/v1/account")
        too_big = await http.post("/v1/account", content=b"x" * 2048)
    assert itself.json()["who"] == "replica"  # the owner's own app, not forwarded
    assert nobody.status_code == 503 and nobody.headers["retry-after"] == "2"
    assert nobody.json()["error"]["code"] == "ledger_unavailable"
    assert too_big.status_code == 413


async def test_a_hostile_forward_is_refused_by_the_owner(bus: LocalBus) -> None:
    door = OwnerDoor(bus, owner_app())
    await door.start()
    try:
        bad = await bus.request("tsr.v1.ledger.http", b"not json", 2)
        elsewhere = await bus.request(
            "tsr.v1.ledger.http",
            json.dumps(
                {"method": "GET", "path": "/admin", "query": "", "headers": [], "body": ""}
            ).encode(),
            2,
        )
    finally:
        await door.close()
    assert json.loads(bad.data)["status"] == 502
    assert json.loads(elsewhere.data)["status"] == 502  # only owner-only paths run there


def test_which_paths_only_the_owner_answers() -> None:
    assert owner_only("/v1/account") and owner_only("/v1/account/usage")
    assert owner_only("/v1/requests/req_1") and owner_only("/v1/providers/abc/uptime")
    assert owner_only("/v1/ledger") and owner_only("/v1/slashing")
    assert not owner_only("/v1/providers/connect")
    assert not owner_only("/v1/chat/completions") and not owner_only("/v1/models")
    assert not owner_only("/v1/accounts-of-someone-else")
