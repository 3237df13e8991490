"""Paying for inference over scripted providers: holds, captures, releases, caps, stake."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tessera.ledger.accounts import TOKEN
from tessera.protocol.provider_api import signed_headers
from tessera.store.api_keys import ApiKeyStore
from tessera.store.engine import create_engine, database_url_for

from support.scripted_peers import (
    PRICE,
    LiveGateway,
    Peer,
    account,
    answer,
    chat_body,
    journal_problems,
    live_gateway,
    priced,
    settled,
)

pytestmark = pytest.mark.integration

WORST = (16 + 32 + 2) * 1_000 + 8 * 2_000  # "hi", max_tokens 8: prompt bound 50 tokens
REAL = 3 * 1_000 + 1 * 2_000  # what answer() reports: 3 prompt + 1 completion tokens


async def test_paid_request_charges_real_usage_and_reports_it(gateway: LiveGateway) -> None:
    peer, beat = await priced(gateway)
    async with gateway.client() as client:
        before = await account(client)
        request = asyncio.create_task(client.post("/v1/chat/completions", json=chat_body()))
        await answer(peer, await peer.recv())
        response = await request
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["cost"] == REAL
        assert response.headers["x-tessera-cost"] == str(REAL)
        assert response.headers["x-tessera-max-cost"] == str(WORST)
        after = await account(client)
        assert after["balance"] == before["balance"] - REAL and after["held"] == 0
        view = await settled(client, response.headers["x-request-id"])
    assert view["settlement"] == "captured" and view["cost"] == REAL and view["held"] == WORST
    assert view["provider_id"] == peer.provider_id
    assert view["provider_earned"] + view["protocol_fee"] + view["verification_pool"] == REAL
    assert view["protocol_fee"] + view["verification_pool"] == REAL * 5 // 100
    assert (view["prompt_tokens"], view["completion_tokens"]) == (3, 1)
    assert await journal_problems(gateway) == []
    beat.cancel()


async def test_empty_balance_is_refused_before_any_work(tmp_path: Path) -> None:
    async with live_gateway(tmp_path, funds=0) as gateway:
        peer, beat = await priced(gateway)
        async with gateway.client() as client:
            response = await client.post("/v1/chat/completions", json=chat_body())
        assert response.status_code == 429
        error = response.json()["error"]
        assert error["type"] == error["code"] == "insufficient_quota"
        assert "Add funds" in error["message"]
        with pytest.raises(TimeoutError):
            await peer.recv(timeout_s=0.3)  # no job was ever sent
        beat.cancel()


async def test_failed_work_costs_nothing(gateway: LiveGateway) -> None:
    peer, beat = await priced(gateway)
    async with gateway.client() as client:
        before = await account(client)
        request = asyncio.create_task(client.post("/v1/chat/completions", json=chat_body()))
        job = await peer.recv()
        await peer.send(
            {"type": "job_error", "job_id": job["job_id"], "code": "oom", "message": "CUDA OOM"}
        )
        response = await request
        assert response.status_code == 502
        assert await account(client) == before
        view = await settled(client, response.headers["x-request-id"])
    assert view["settlement"] == "released" and view["cost"] == 0
    beat.cancel()


async def test_provider_failing_mid_stream_costs_nothing(gateway: LiveGateway) -> None:
    peer, beat = await priced(gateway)

    async def provider_side() -> None:
        job = await peer.recv()
        await peer.send({"type": "chunk", "job_id": job["job_id"], "text": "a", "tokens": 1})
        await peer.send(
            {"type": "job_error", "job_id": job["job_id"], "code": "x", "message": "died"}
        )

    async with gateway.client() as client:
        before = await account(client)
        side = asyncio.create_task(provider_side())
        async with client.stream(
            "POST", "/v1/chat/completions", json=chat_body(stream=True)
        ) as response:
            body = (await response.aread()).decode()
        await side
        assert '"error"' in body and body.rstrip().endswith("data: [DONE]")
        view = await settled(client, response.headers["x-request-id"])
        assert view["settlement"] == "released"
        assert await account(client) == before
    beat.cancel()


async def test_cancelled_stream_pays_only_for_delivered_tokens(gateway: LiveGateway) -> None:
    peer, beat = await priced(gateway)

    async def provider_side() -> None:
        job = await peer.recv()
        first = {"type": "chunk", "job_id": job["job_id"], "text": "once upon", "tokens": 2}
        await peer.send({**first, "prompt_tokens": 3})

    async with gateway.client() as client:
        side = asyncio.create_task(provider_side())
        async with client.stream(
            "POST", "/v1/chat/completions", json=chat_body(stream=True)
        ) as response:
            await side
            request_id = response.headers["x-request-id"]
            async for line in response.aiter_lines():
                if "once upon" in line:
                    break  # the client walks away after the first words
        assert (await peer.recv())["type"] == "cancel"
        view = await settled(client, request_id)
    assert view["settlement"] == "captured"
    assert view["cost"] == 3 * 1_000 + 2 * 2_000
    beat.cancel()


async def test_max_price_below_every_provider_is_refused(gateway: LiveGateway) -> None:
    peer, beat = await priced(gateway)
    async with gateway.client() as client:
        cheap = {"max_price": {"prompt": PRICE[0], "completion": PRICE[1] - 1}}
        response = await client.post("/v1/chat/completions", json=chat_body(provider=cheap))
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "no_provider_within_max_price"
        assert response.json()["error"]["param"] == "provider.max_price"
        fractional = {"max_price": {"completion": 2.5}}
        response = await client.post("/v1/chat/completions", json=chat_body(provider=fractional))
        assert response.status_code == 400
        exact = {"max_price": {"prompt": PRICE[0], "completion": PRICE[1]}}
        request = asyncio.create_task(
            client.post("/v1/chat/completions", json=chat_body(provider=exact))
        )
        await answer(peer, await peer.recv())
        assert (await request).status_code == 200
    beat.cancel()


async def test_key_spend_cap_is_enforced_before_work(gateway: LiveGateway) -> None:
    _peer, beat = await priced(gateway)
    async with gateway.client() as client:
        account_id = (await account(client))["id"]
    engine = create_engine(database_url_for(gateway.settings.data_dir))
    capped, _ = await ApiKeyStore(engine).create(
        "capped", account_id=account_id, spend_cap_total=WORST - 1
    )
    await engine.dispose()
    async with httpx.AsyncClient(
        base_url=gateway.base, headers={"Authorization": f"Bearer {capped}"}
    ) as client:
        response = await client.post("/v1/chat/completions", json=chat_body())
        assert response.status_code == 429
        assert "spend cap" in response.json()["error"]["message"]
        view = await account(client)
        assert view["key"]["spend_cap_total"] == WORST - 1
    beat.cancel()


async def test_many_requests_against_a_small_balance_never_overspend(tmp_path: Path) -> None:
    affordable = 3
    async with live_gateway(tmp_path, funds=affordable * WORST + WORST // 2) as gateway:
        peer, beat = await priced(gateway, slots=32)
        async with gateway.client() as client:
            requests = [
                asyncio.create_task(client.post("/v1/chat/completions", json=chat_body()))
                for _ in range(20)
            ]
            jobs = [await peer.recv(timeout_s=10.0) for _ in range(affordable)]
            # Everyone else is refused while those three hold the balance...
            async with asyncio.timeout(30):
                while sum(r.done() for r in requests) < 20 - affordable:
                    await asyncio.sleep(0.05)
            # ...and no fourth job ever reached the provider.
            with pytest.raises(TimeoutError):
                await peer.recv(timeout_s=0.3)
            assert (await account(client))["held"] == affordable * WORST
            for job in jobs:
                await answer(peer, job)
            responses = await asyncio.gather(*requests)
            statuses = sorted(r.status_code for r in responses)
            assert statuses == [200] * affordable + [429] * (20 - affordable)
            final = await account(client)
        assert final["held"] == 0
        assert final["balance"] == affordable * WORST + WORST // 2 - affordable * REAL
        assert await journal_problems(gateway) == []
        beat.cancel()


async def test_stake_gates_routing_and_signed_moves_apply_once(tmp_path: Path) -> None:
    async with live_gateway(tmp_path, min_stake_units=5 * TOKEN) as gateway:
        peer, beat = await priced(gateway)
        async with gateway.client() as client:
            response = await client.post("/v1/chat/completions", json=chat_body())
            assert response.status_code == 503
            assert "minimum stake" in response.json()["error"]["message"]

            async def move(action: str, body: dict[str, Any], key: Any = None) -> httpx.Response:
                path = f"/v1/providers/{peer.provider_id}/{action}"
                raw = json.dumps(body).encode()
                headers = signed_headers(key or peer.key, "POST", path, raw, time.time())
                return await client.post(path, content=raw, headers=headers)

            funded = await move("fund", {"amount": 6 * TOKEN, "reference": uuid.uuid4().hex})
            assert funded.status_code == 200, funded.text
            bond = {"amount": 5 * TOKEN, "reference": uuid.uuid4().hex}
            first = await move("stake/bond", bond)
            again = await move("stake/bond", bond)  # a replay: applied once
            assert first.json()["bonded"] == again.json()["bonded"] == 5 * TOKEN
            assert again.json()["replayed"] is True
            assert first.json()["routable"] is True
            too_much = await move("stake/bond", {"amount": 2 * TOKEN, "reference": "x" * 12})
            assert too_much.status_code == 400
            assert too_much.json()["error"]["code"] == "insufficient_funds"
            forged = await move(
                "stake/unbond", {"amount": 1, "reference": "y" * 12}, stranger_key()
            )
            assert forged.status_code == 401

            request = asyncio.create_task(client.post("/v1/chat/completions", json=chat_body()))
            await answer(peer, await peer.recv())
            assert (await request).status_code == 200
            public = (await client.get(f"/v1/providers/{peer.provider_id}")).json()
            assert public["earnings"] == REAL - REAL * 5 // 100
        beat.cancel()


def stranger_key() -> Any:
    from nacl.signing import SigningKey

    return SigningKey.generate()


async def test_dev_faucet_is_refused_in_production_and_checks_amounts(tmp_path: Path) -> None:
    async with live_gateway(tmp_path, funds=0) as gateway, gateway.client() as client:
        for bad in ({"amount": 1.5}, {"amount": -1}, {"amount": "10"}, {"amount": 2**70}, {}):
            response = await client.post("/v1/account/fund", json=bad)
            assert response.status_code == 400, (bad, response.text)
        response = await client.post("/v1/account/fund", content=b"{nope")
        assert response.status_code == 400
    async with live_gateway(tmp_path / "prod", funds=0, dev_mode=False) as gateway:
        async with gateway.client() as client:
            response = await client.post("/v1/account/fund", json={"amount": 5})
            assert response.status_code == 403
            assert "settlement" in response.json()["error"]["message"]


async def test_requests_of_other_accounts_are_not_visible(gateway: LiveGateway) -> None:
    peer, beat = await priced(gateway)
    async with gateway.client() as client:
        request = asyncio.create_task(client.post("/v1/chat/completions", json=chat_body()))
        await answer(peer, await peer.recv())
        request_id = (await request).headers["x-request-id"]
    engine = create_engine(database_url_for(gateway.settings.data_dir))
    stranger, _ = await ApiKeyStore(engine).create("stranger")
    await engine.dispose()
    async with httpx.AsyncClient(
        base_url=gateway.base, headers={"Authorization": f"Bearer {stranger}"}
    ) as client:
        response = await client.get(f"/v1/requests/{request_id}")
        assert response.status_code == 404
    beat.cancel()


async def test_money_api_is_published_and_checks_ids(gateway: LiveGateway) -> None:
    async with gateway.client() as client:
        paths = (await client.get("/openapi.json")).json()["paths"]
        for path in (
            "/v1/account",
            "/v1/account/usage",
            "/v1/requests/{request_id}",
            "/v1/providers/{provider_id}/stake/bond",
            "/v1/slashing",
        ):
            assert path in paths
        assert (await client.get("/v1/providers/not-a-key")).status_code == 400
        table = (await client.get("/v1/slashing")).json()["data"]
        assert {rule["reason"] for rule in table} >= {"forged_receipt", "downtime"}
        totals = (await client.get("/v1/ledger")).json()
        assert totals["minted"] > 0 and totals["fee_bps"] == 500
    async with httpx.AsyncClient(base_url=gateway.base) as anonymous:
        assert (await anonymous.get("/v1/account")).status_code == 401


async def test_unbonded_stake_returns_only_after_the_delay(tmp_path: Path) -> None:
    async with live_gateway(tmp_path, unbonding_delay_s=1.0) as gateway:
        peer = await Peer.open(gateway.ws_url)
        async with gateway.client() as client:

            async def move(action: str, body: dict[str, Any]) -> dict[str, Any]:
                path = f"/v1/providers/{peer.provider_id}/{action}"
                raw = json.dumps({**body, "reference": uuid.uuid4().hex}).encode()
                headers = signed_headers(peer.key, "POST", path, raw, time.time())
                response = await client.post(path, content=raw, headers=headers)
                assert response.status_code == 200, response.text
                return response.json()

            await move("fund", {"amount": 10})
            await move("stake/bond", {"amount": 10})
            view = await move("stake/unbond", {"amount": 4})
            assert view["bonded"] == 6 and view["unbonding"][0]["amount"] == 4
            early = await move("stake/withdraw", {})
            assert early["entry_id"] is None and early["balance"] == 0  # not matured yet
            await asyncio.sleep(1.1)
            late = await move("stake/withdraw", {})
            assert late["balance"] == 4 and late["unbonding"] == []
        await peer.close()
