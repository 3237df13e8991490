"""Receipts, join challenges, audits and disputes through a real gateway and scripted peers.

The peers speak the wire protocol with real keys and sign what an agent signs; each test
makes one of them lie in one way and checks the gateway catches it, refuses to pay for it,
and (where the lie is proven) slashes it — and that honest peers are never touched.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from nacl.signing import SigningKey
from typer.testing import CliRunner

from tessera.protocol.receipts import CountersignedReceipt, verify_countersigned
from tessera.protocol.signing import public_key_hex
from tessera.receipt_cli import receipt_app
from tessera.store.api_keys import ApiKeyStore
from tessera.store.engine import create_engine, database_url_for

from support.audit_peers import (
    CLOSED,
    PRICE,
    bonded,
    catalog_file,
    fail_audit,
    gateway_with_a_cheat,
    join,
    join_validators,
    model_status,
    stop,
    until_audited,
    wait_status,
)
from support.scripted_peers import (
    MODEL,
    Peer,
    answer_tokens,
    chat_body,
    done_frame,
    live_gateway,
    poll,
)

# ------------------------------------------------------------------ receipts


async def test_a_receipt_is_countersigned_and_only_its_consumer_reads_it(
    gateway_dir: Path,
) -> None:
    async with live_gateway(gateway_dir) as gw:
        _, tasks = await join(gw, gateway_dir, "p")
        async with gw.client() as client:
            response = await client.post("/v1/chat/completions", json=chat_body())
            assert response.status_code == 200, response.text
            request_id = response.headers["x-request-id"]
            got = await client.get(f"/v1/receipts/{request_id}")
            assert got.status_code == 200, got.text
            gateway_key = (await client.get("/v1/gateway")).json()["public_key"]
        body = got.json()
        signed = CountersignedReceipt.model_validate(
            {k: v for k, v in body.items() if k != "object"}
        )
        verify_countersigned(signed, gateway_key)
        assert signed.receipt.request_id == request_id
        assert (signed.receipt.prompt_tokens, signed.receipt.completion_tokens) == (3, 1)

        engine = create_engine(database_url_for(gateway_dir))
        other_key, _ = await ApiKeyStore(engine).create("someone else")
        await engine.dispose()
        async with httpx.AsyncClient(base_url=gw.base) as anyone:
            stranger = await anyone.get(
                f"/v1/receipts/{request_id}", headers={"Authorization": f"Bearer {other_key}"}
            )
            anonymous = await anyone.get(f"/v1/receipts/{request_id}")
        assert stranger.status_code == 404
        assert anonymous.status_code == 401

        # Offline: the file verifies; any edit breaks it.
        path = gateway_dir / "receipt.json"
        path.write_text(json.dumps(body))
        runner = CliRunner()
        good = runner.invoke(receipt_app, ["verify", str(path), "--gateway-key", gateway_key])
        assert good.exit_code == 0, good.output
        body["receipt"]["completion_tokens"] = 99
        path.write_text(json.dumps(body))
        bad = runner.invoke(receipt_app, ["verify", str(path)])
        assert bad.exit_code == 1 and "provider's signature" in bad.output
        wrong_gateway = runner.invoke(
            receipt_app, ["verify", str(path), "--gateway-key", "ab" * 32]
        )
        assert wrong_gateway.exit_code == 1
        stop(tasks)


async def test_a_job_without_receipt_is_refused_and_answered_elsewhere(gateway_dir: Path) -> None:
    async with live_gateway(gateway_dir) as gw:
        bad = await Peer.open(gw.ws_url)
        await bad.register(slots=2, price=PRICE)
        beat = asyncio.create_task(bad.beat_forever())
        async with gw.client() as client:
            before = (await client.get("/v1/account")).json()["balance"]
            request = asyncio.create_task(client.post("/v1/chat/completions", json=chat_body()))
            job = await bad.recv()
            _, tasks = await join(gw, gateway_dir, "good")
            frame = done_frame(bad, job, [], (3, 1))
            del frame["receipt"], frame["receipt_signature"]
            await bad.send({"type": "chunk", "job_id": job["job_id"], "text": "unsigned"})
            await bad.send(frame)
            response = await request
            assert response.status_code == 200, response.text
            assert response.json()["choices"][0]["message"]["content"] == "hello"
            after = (await client.get("/v1/account")).json()["balance"]
            assert before - after == 5_000  # paid once, to the provider that proved its work
            reputation = await poll(
                client,
                f"/v1/providers/{bad.provider_id}/reputation",
                lambda body: body["violations"],
            )
        assert reputation["violations"][0]["kind"] == "missing_receipt"
        assert reputation["violations"][0]["request_id"] == response.headers["x-request-id"]
        assert reputation["receipts_refused"] == 1
        beat.cancel()
        stop(tasks)


@pytest.mark.parametrize("lie", ["forged", "replayed"])
async def test_a_forged_or_replayed_receipt_slashes_the_whole_stake(
    gateway_dir: Path, lie: str
) -> None:
    first_receipt: dict[str, Any] = {}

    async def liar(peer: Peer, job: dict[str, Any]) -> None:
        chunk = {"type": "chunk", "job_id": job["job_id"], "text": "hi", "tokens": 1,
                 "token_ids": [1], "token_logprobs": [-0.5]}  # fmt: skip
        end = {"type": "chunk", "job_id": job["job_id"], "finish_reason": "stop"}
        frame = done_frame(peer, job, [chunk, end], (3, 1))
        if lie == "forged":
            frame = done_frame(Peer(peer.ws, SigningKey.generate()), job, [chunk, end], (3, 1))
            frame["receipt"]["provider_id"] = peer.provider_id
        elif not first_receipt:
            first_receipt.update(frame)
        else:
            frame = {**first_receipt, "job_id": job["job_id"]}
        await peer.send(chunk)
        await peer.send(end)
        await peer.send(frame)

    async with live_gateway(gateway_dir, min_stake_units=10**9) as gw:
        peer, tasks = await join(gw, gateway_dir, "liar", stake=True, on_job=liar)
        async with gw.client() as client:
            before = (await client.get("/v1/account")).json()["balance"]
            stake = await bonded(client, peer)
            assert stake > 0
            requests = 2 if lie == "replayed" else 1
            statuses = [
                (await client.post("/v1/chat/completions", json=chat_body())).status_code
                for _ in range(requests)
            ]
            assert statuses[-1] == 502  # refused, and nobody else could answer
            await poll(client, f"/v1/providers/{peer.provider_id}", lambda b: b["bonded"] == 0)
            reputation = await poll(
                client, f"/v1/providers/{peer.provider_id}/reputation", lambda b: b["bans"]
            )
            after = (await client.get("/v1/account")).json()["balance"]
        kinds = {v["kind"] for v in reputation["violations"]}
        assert kinds == {"forged_receipt"}
        assert [b["model"] for b in reputation["bans"]] == [MODEL]
        assert reputation["models"][MODEL] == "banned"
        expected_paid = 5_000 if lie == "replayed" else 0  # the first, honest answer was paid
        assert before - after == expected_paid
        stop(tasks)


async def test_a_streamed_answer_with_inflated_counts_is_free_and_slashed(
    gateway_dir: Path,
) -> None:
    async def inflater(peer: Peer, job: dict[str, Any]) -> None:
        chunk = {"type": "chunk", "job_id": job["job_id"], "text": "two words", "tokens": 2,
                 "token_ids": [1, 2], "token_logprobs": [-0.5, -0.5]}  # fmt: skip
        end = {"type": "chunk", "job_id": job["job_id"], "finish_reason": "stop"}
        await peer.send(chunk)
        await peer.send(end)
        await peer.send(done_frame(peer, job, [chunk, end], (3, 7)))  # 7 claimed, 2 sent

    async with live_gateway(gateway_dir, min_stake_units=10**9) as gw:
        peer, tasks = await join(gw, gateway_dir, "inflater", stake=True, on_job=inflater)
        async with gw.client() as client:
            before = (await client.get("/v1/account")).json()["balance"]
            stake = await bonded(client, peer)
            async with client.stream(
                "POST", "/v1/chat/completions", json=chat_body(stream=True)
            ) as response:
                body = (await response.aread()).decode()
            assert "two words" in body and body.rstrip().endswith("data: [DONE]")
            await poll(client, f"/v1/providers/{peer.provider_id}", lambda b: b["bonded"] < stake)
            after = (await client.get("/v1/account")).json()["balance"]
            left = await bonded(client, peer)
        assert before == after  # unproven work costs the consumer nothing
        assert left == stake // 2  # tampered_output takes half
        stop(tasks)


# ------------------------------------------------------------------ catalog and challenges


async def test_the_catalog_pins_weights_and_newcomers_must_pass_the_challenge(
    gateway_dir: Path,
) -> None:
    async def wrong_challenge(peer: Peer) -> None:
        with_bad_tokens = await peer.recv()
        assert with_bad_tokens["job_id"].startswith("challenge")
        await answer_tokens(peer, with_bad_tokens, [9, 9, 9], [-4.0, -4.0, -4.0], 2)

    async with live_gateway(gateway_dir, catalog_file=catalog_file(gateway_dir)) as gw:
        async with gw.client() as client:
            mismatch, t1 = await join(gw, gateway_dir, "mismatch", weights="ab" * 32)
            await wait_status(client, mismatch, "weights_mismatch")
            refused = await client.post("/v1/chat/completions", json=chat_body())
            assert refused.status_code == 503

            failing = await Peer.open(gw.ws_url)
            await failing.register(slots=2, price=PRICE)
            beat = asyncio.create_task(failing.beat_forever())
            await wrong_challenge(failing)
            await wait_status(client, failing, "challenge_failed")
            assert (await client.post("/v1/chat/completions", json=chat_body())).status_code == 503

            good, t2 = await join(gw, gateway_dir, "good")
            await wait_status(client, good, "routable")
            served = await client.post("/v1/chat/completions", json=chat_body())
            assert served.status_code == 200, served.text
            assert served.headers["x-tessera-provider"] == good.provider_id
            models = (await client.get("/v1/models")).json()["data"]
            catalog = (await client.get("/v1/catalog")).json()["data"]
        assert [m["id"] for m in models] == [MODEL] and models[0]["providers"] == 1
        assert catalog[0]["weights_sha256"] == "cd" * 32
        beat.cancel()
        stop(t1 + t2)


# ------------------------------------------------------------------ audits and disputes


async def test_two_failed_audits_of_three_slash_refund_and_ban(gateway_dir: Path) -> None:
    async with gateway_with_a_cheat(gateway_dir) as (_, client, cheat, keys):
        stake = await bonded(client, cheat)
        before = (await client.get("/v1/account")).json()["balance"]
        response = await client.post("/v1/chat/completions", json=chat_body())
        assert response.status_code == 200, response.text
        assert response.headers["x-tessera-provider"] == cheat.provider_id
        assert int(response.headers["x-tessera-cost"]) == 5_000
        cases = await poll(
            client,
            f"/v1/audit-cases?provider={cheat.provider_id}",
            lambda body: body["data"] and body["data"][0]["status"] in CLOSED,
        )
        case = cases["data"][0]
        detail = (await client.get(f"/v1/audit-cases/{case['request_id']}")).json()
        after = (await client.get("/v1/account")).json()["balance"]
        left = await bonded(client, cheat)
        status = await model_status(client, cheat)
        paid = [
            (await client.get(f"/v1/providers/{public_key_hex(k)}")).json()["earnings"]
            for k in keys
        ]
        pool = (await client.get("/v1/ledger")).json()["verification_pool"]
        # The request's fee put 125 units in the pool; the first auditor's 4 scored tokens at
        # its input price would be 4000, so it gets all 125 and the pool is empty.
        assert sum(paid) == 125 and pool == 0
        assert case["status"] == "upheld" and case["reason"] == "tampered_output"
        assert [a["outcome"] for a in detail["audits"]] == ["failed", "failed"]
        assert {a["auditor_id"] for a in detail["audits"]} <= {public_key_hex(k) for k in keys}
        assert after == before  # the consumer got its 5000 units back
        assert case["refunded"] == 5_000
        assert left == stake - stake // 2 and case["slashed"] == stake // 2
        assert status == "banned"


async def test_one_lying_auditor_cannot_slash_an_honest_provider(gateway_dir: Path) -> None:
    keys = [SigningKey.generate() for _ in range(3)]  # keys[0] fails every audit it is given
    async with live_gateway(
        gateway_dir,
        catalog_file=catalog_file(gateway_dir),
        validator_keys=[public_key_hex(k) for k in keys],
        min_stake_units=10**9,
    ) as gw:
        async with gw.client() as client:
            tasks = await join_validators(gw, client, gateway_dir, keys, first_audits=fail_audit)
            honest, more = await join(gw, gateway_dir, "honest", stake=True)
            tasks += more
            await wait_status(client, honest, "routable")
            stake = await bonded(client, honest)
            statuses: set[str] = set()

            async def cleared() -> bool:
                # Auditors are drawn at random; the liar is first in a third of cases.
                path = f"/v1/audit-cases?provider={honest.provider_id}"
                statuses.update(c["status"] for c in (await client.get(path)).json()["data"])
                return "cleared" in statuses

            await until_audited(client, honest, cleared)
            liar = (await client.get(f"/v1/providers/{public_key_hex(keys[0])}/reputation")).json()
            left = await bonded(client, honest)
            status = await model_status(client, honest)
        assert statuses <= {"passed", "cleared"} and "cleared" in statuses
        assert liar["dissents"] >= 1
        assert left == stake and status == "routable"
        stop(tasks)


async def test_an_auditor_that_does_not_answer_is_replaced(gateway_dir: Path) -> None:
    async def crash(peer: Peer, audit: dict[str, Any]) -> None:
        error = {"code": "backend_crashed", "message": "out of memory", "retryable": False}
        await peer.send({"type": "job_error", "job_id": audit["job_id"], **error})

    keys = [SigningKey.generate() for _ in range(3)]  # keys[0] never gives a result
    async with live_gateway(
        gateway_dir,
        catalog_file=catalog_file(gateway_dir),
        validator_keys=[public_key_hex(k) for k in keys],
        min_stake_units=10**9,
    ) as gw:
        async with gw.client() as client:
            tasks = await join_validators(gw, client, gateway_dir, keys, first_audits=crash)
            honest, more = await join(gw, gateway_dir, "honest", stake=True)
            tasks += more
            await wait_status(client, honest, "routable")
            audits: dict[str, Any] = {}

            async def silent_one_asked() -> bool:
                path = f"/v1/audits?provider={honest.provider_id}"
                audits.update((await client.get(path)).json())
                return any(a["outcome"] == "no_answer" for a in audits["data"])

            await until_audited(client, honest, silent_one_asked)
            cases = (await client.get(f"/v1/audit-cases?provider={honest.provider_id}")).json()
        silent = [a for a in audits["data"] if a["outcome"] == "no_answer"]
        assert silent and silent[0]["auditor_id"] == public_key_hex(keys[0])
        assert "backend_crashed" in silent[0]["evidence"]["problem"]
        assert {a["round"] for a in audits["data"]} == {1}  # a silent auditor is not a vote
        assert {c["status"] for c in cases["data"]} == {"passed"}
        stop(tasks)
