"""Strings that end in a journal column are bounded at the API, and one bad call never
stops paid work for everyone (issue 11, finding 1)."""

from __future__ import annotations

import asyncio

import pytest

from support.scripted_peers import (
    PRICE,
    LiveGateway,
    Peer,
    account,
    answer,
    chat_body,
    journal_problems,
)

pytestmark = pytest.mark.integration

REAL = 3 * 1_000 + 1 * 2_000  # what answer() reports: 3 prompt + 1 completion tokens


async def test_an_overlong_idempotency_key_is_refused_and_paid_chats_go_on(
    gateway: LiveGateway,
) -> None:
    peer = await Peer.open(gateway.ws_url)
    assert (await peer.register(slots=2, price=PRICE))["type"] == "welcome"
    beat = asyncio.create_task(peer.beat_forever())
    async with gateway.client() as client:
        before = await account(client)
        refused = await client.post(
            "/v1/account/fund", json={"amount": 1}, headers={"Idempotency-Key": "k" * 300}
        )
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert (error["param"], error["code"]) == ("Idempotency-Key", "invalid_value")
        assert "100" in error["message"]
        assert await account(client) == before  # nothing was minted, in memory or on disk

        for _ in range(2):  # paid work still goes on, and is charged
            request = asyncio.create_task(client.post("/v1/chat/completions", json=chat_body()))
            await answer(peer, await peer.recv())
            response = await request
            assert response.status_code == 200, response.text
            assert response.json()["usage"]["cost"] == REAL

        longest = await client.post(
            "/v1/account/fund", json={"amount": 5}, headers={"Idempotency-Key": "k" * 100}
        )
        assert longest.status_code == 200, longest.text
        assert longest.json()["balance"] == before["balance"] - 2 * REAL + 5
        again = await client.post(
            "/v1/account/fund", json={"amount": 5}, headers={"Idempotency-Key": "k" * 100}
        )
        assert again.json()["replayed"] is True
        spaced = await client.post(
            "/v1/account/fund", json={"amount": 5}, headers={"Idempotency-Key": "a key"}
        )
        assert spaced.status_code == 400 and spaced.json()["error"]["param"] == "Idempotency-Key"
    assert await journal_problems(gateway) == []
    beat.cancel()
