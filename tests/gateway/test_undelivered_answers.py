"""An answer is charged only when it reaches the client, and only for what the gateway
can bound: user text in headers, answers that cannot be sent, overclaimed prompts."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from tessera.gateway.header_values import header_value

from support.scripted_peers import MODEL, LiveGateway, answer, chat_body, priced, settled

pytestmark = pytest.mark.integration

REAL = 3 * 1_000 + 1 * 2_000  # what answer() reports: 3 prompt + 1 completion tokens


async def balance(client: httpx.AsyncClient) -> tuple[int, int]:
    view = (await client.get("/v1/account")).json()
    return view["balance"], view["held"]


def chat_scope(gateway: LiveGateway, content_length: int) -> dict[str, Any]:
    """The ASGI scope of a POST /v1/chat/completions by the gateway's key, to drive the
    app with a receive and a send of the test's own."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"authorization", f"Bearer {gateway.api_key}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(content_length).encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }


def test_header_value_keeps_plain_text_and_encodes_the_rest() -> None:
    assert header_value("best of 3; provider=ab12") == "best of 3; provider=ab12"
    for hostile in ("nope\r\nX-Injected: 1", "nul\x00byte", "modèle ✓", "100%", "\ud800"):
        encoded = header_value(hostile)
        assert all(0x20 <= ord(c) < 0x7F for c in encoded), encoded
        assert "\r" not in encoded and "\n" not in encoded
    assert unquote(header_value("nope\r\nX: 1")) == "nope\r\nX: 1"
    assert unquote(header_value("modèle ✓")) == "modèle ✓"
    cut = header_value("é" * 1000, limit=100)
    assert len(cut) <= 100 and not cut.endswith("%") and cut.count("%") % 2 == 0


@pytest.mark.parametrize("model", ["nope\r\nX-Injected: 1", "modèle-✓", "nul\x00"])
async def test_fallback_route_header_carries_the_user_model_encoded(
    gateway: LiveGateway, model: str
) -> None:
    """The raw model name went into x-tessera-route after the capture: CR/LF dropped the
    connection and a non-Latin-1 character gave a 500, both already charged."""
    peer, beat = await priced(gateway)
    async with gateway.client() as client:
        before, _ = await balance(client)
        body = chat_body(model=model, models=[MODEL])
        request = asyncio.create_task(client.post("/v1/chat/completions", json=body))
        await answer(peer, await peer.recv())
        response = await request
        after, held = await balance(client)
    beat.cancel()
    if response.status_code == 400:  # a gateway may refuse such a name outright: free
        assert response.json()["error"]["param"] == "model"
        assert (after, held) == (before, 0)
        return
    assert response.status_code == 200, response.text
    assert "x-injected" not in response.headers
    route = response.headers["x-tessera-route"]
    assert unquote(route).startswith(f"fallback model {MODEL} (model {model} unavailable)")
    assert response.json()["usage"]["cost"] == REAL
    assert (after, held) == (before - REAL, 0)


async def test_an_answer_that_cannot_be_sent_is_not_charged(gateway: LiveGateway) -> None:
    """Whatever stops a finished answer on its way out, its hold is released."""
    peer, beat = await priced(gateway)
    raw = json.dumps(chat_body()).encode()
    received = False

    async def receive() -> dict[str, Any]:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await asyncio.sleep(3600)  # the client stays connected
        raise AssertionError("unreachable")

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body":
            raise OSError("connection reset by peer")

    scope = chat_scope(gateway, len(raw))
    async with gateway.client() as client:
        before, _ = await balance(client)
        call = asyncio.create_task(gateway.app(scope, receive, send))
        await answer(peer, await peer.recv())
        with contextlib.suppress(OSError):  # the app may log it and return, or raise it
            await asyncio.wait_for(call, 10)
        start = next(m for m in sent if m["type"] == "http.response.start")
        assert start["status"] == 200
        request_id = dict(start["headers"])[b"x-request-id"].decode()
        view = await settled(client, request_id)
        after, held = await balance(client)
    beat.cancel()
    assert view["settlement"] == "released" and view["cost"] == 0
    assert (after, held) == (before, 0)


async def test_a_prompt_count_above_the_gateways_bound_is_not_billed(
    gateway: LiveGateway,
) -> None:
    """A provider claiming 256 prompt tokens for "hi" is paid for at most the gateway's
    own bound on that prompt (16 + 32 + 2 bytes = 50 tokens)."""
    peer, beat = await priced(gateway)
    async with gateway.client() as client:
        before, _ = await balance(client)
        request = asyncio.create_task(client.post("/v1/chat/completions", json=chat_body()))
        await answer(peer, await peer.recv(), usage=(256, 1))
        response = await request
        after, _ = await balance(client)
    beat.cancel()
    assert response.status_code == 200, response.text
    bounded = 50 * 1_000 + 1 * 2_000
    assert response.json()["usage"]["cost"] == bounded
    assert after == before - bounded


async def test_a_hold_the_journal_refuses_is_never_answered_or_charged(
    gateway: LiveGateway,
) -> None:
    """The hold is stored while the provider works, not before: if the store refuses it,
    the finished answer is withheld (503), the job is not paid and nothing moves."""
    from sqlalchemy import text

    from tessera.store.engine import create_engine, database_url_for

    peer, beat = await priced(gateway)
    engine = create_engine(database_url_for(gateway.settings.data_dir))
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "CREATE TRIGGER refuse_holds BEFORE INSERT ON ledger_entries "
                "WHEN NEW.kind = 'hold' BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            )
        )
    try:
        async with gateway.client() as client:
            before = await balance(client)
            request = asyncio.create_task(client.post("/v1/chat/completions", json=chat_body()))
            await answer(peer, await peer.recv())
            refused = await request
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "journal_refused"
            assert await balance(client) == before
            async with engine.begin() as conn:
                await conn.execute(text("DROP TRIGGER refuse_holds"))
            request = asyncio.create_task(client.post("/v1/chat/completions", json=chat_body()))
            job = await peer.recv()
            if job["type"] == "cancel":  # the refused job's, sent as it was withheld
                job = await peer.recv()
            await answer(peer, job)
            response = await request
            assert response.status_code == 200, response.text
            assert response.json()["usage"]["cost"] == REAL
            view = await settled(client, response.headers["x-request-id"])
            assert view["settlement"] == "captured"
            assert await balance(client) == (before[0] - REAL, 0)
    finally:
        beat.cancel()
        await engine.dispose()


async def test_a_client_gone_before_its_body_is_let_go_quietly(
    gateway: LiveGateway, caplog: pytest.LogCaptureFixture
) -> None:
    """No body, just a disconnect: nothing to answer, no 'unexpected error' in the log,
    nothing held."""
    scope = chat_scope(gateway, 100)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async with gateway.client() as client:
        before = await balance(client)
        await asyncio.wait_for(gateway.app(scope, receive, send), 10)
        assert await balance(client) == before
    assert not [m for m in sent if m["type"] == "http.response.start"]
    assert "unexpected" not in caplog.text
