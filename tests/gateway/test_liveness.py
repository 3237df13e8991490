"""Uptime against the SLA through a real gateway: scripted peers crash, blip, race and leave.

A one-second epoch keeps these quick. The peers speak the wire protocol with real keys and
declare their SLA in signed capabilities; the gateway's own clock and epoch loop decide.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from nacl.signing import SigningKey

from tessera.dev_money import DEFAULT_STAKE, stake_provider
from tessera.key_file import load_or_create_key
from tessera.ledger.book import Book, BookPolicy
from tessera.market.uptime import breached
from tessera.protocol.signing import sign
from tessera.protocol.wire import PROTOCOL_VERSION, REGISTER_DOMAIN, Register, register_payload
from tessera.store.engine import create_engine, database_url_for
from tessera.store.ledger import LedgerStore

from support.scripted_peers import MODEL, LiveGateway, Peer, answer, caps_for, chat_body, poll
from support.scripted_peers import live_gateway as scripted_gateway

pytestmark = pytest.mark.integration

EPOCH_S = 1
PRICE = (10**9, 2 * 10**9)
DOWNTIME_BPS = 100  # the default slashing table's "downtime" share of exposed stake


def live_gateway(tmp_path: Path) -> Any:
    return scripted_gateway(tmp_path, min_stake_units=10**9, sla_epoch_s=float(EPOCH_S))


class Provider:
    """A staked scripted provider that declares an SLA, heartbeats and answers jobs."""

    def __init__(self, gw: LiveGateway, key: SigningKey, sla_bps: int) -> None:
        self.gw, self.key, self.sla_bps = gw, key, sla_bps
        self.peer: Peer | None = None
        self.tasks: list[asyncio.Task[None]] = []

    @classmethod
    async def staked(cls, gw: LiveGateway, tmp_path: Path, name: str, sla_bps: int) -> Provider:
        key_file = tmp_path / f"{name}.key"
        key = load_or_create_key(key_file)
        await asyncio.to_thread(stake_provider, gw.base, key_file)
        return cls(gw, key, sla_bps)

    @property
    def id(self) -> str:
        return self.connection.provider_id

    @property
    def connection(self) -> Peer:
        if self.peer is None:
            raise AssertionError("not connected")
        return self.peer

    async def connect(self, serve: bool = True) -> Peer:
        """A new connection (the older one, if any, stays open until closed)."""
        peer = await Peer.open(self.gw.ws_url, self.key)
        caps = caps_for(self.key, slots=2, price=PRICE)
        caps = caps.model_copy(update={"sla_uptime_bps": self.sla_bps})
        signature = sign(self.key, REGISTER_DOMAIN, register_payload(peer.hello["nonce"], caps))
        frame = Register(
            version=PROTOCOL_VERSION,
            nonce=peer.hello["nonce"],
            capabilities=caps,
            signature=signature,
        )
        await peer.ws.send(frame.model_dump_json())
        peer.price = PRICE
        assert (await peer.recv())["type"] == "welcome"
        self.peer = peer
        self.tasks.append(asyncio.create_task(peer.beat_forever()))
        if serve:
            self.tasks.append(asyncio.create_task(_answer_jobs(peer)))
        return peer

    async def crash(self) -> None:
        """Drop every connection without a goodbye."""
        for task in self.tasks:
            task.cancel()
        self.tasks.clear()
        if self.peer is not None:
            await self.peer.close()


async def _answer_jobs(peer: Peer) -> None:
    with contextlib.suppress(Exception):
        while True:
            frame = await peer.recv(timeout_s=60)
            if frame["type"] == "job":
                await answer(peer, frame)


async def next_epoch() -> int:
    """Sleep into the next epoch; its start in Unix seconds."""
    start = math.floor(time.time() / EPOCH_S + 1) * EPOCH_S
    await asyncio.sleep(start - time.time() + 0.05)
    return start


async def uptime(client: httpx.AsyncClient, provider_id: str) -> dict[str, Any]:
    response = await client.get(f"/v1/providers/{provider_id}/uptime")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def bonded(client: httpx.AsyncClient, provider: Provider) -> int:
    return int((await client.get(f"/v1/providers/{provider.id}")).json()["bonded"])


async def insurance_pool(client: httpx.AsyncClient) -> int:
    return int((await client.get("/v1/ledger")).json()["insurance_pool"])


async def journal_problems(gw: LiveGateway) -> list[str]:
    """What `tessera ledger check` reports: SQL checks, then a replay into a fresh book."""
    engine = create_engine(database_url_for(gw.settings.data_dir))
    try:
        store = LedgerStore(engine)
        problems = await store.check()
        return problems + Book(BookPolicy(), await store.load()).check()
    finally:
        await engine.dispose()


def with_downtime(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The stored epochs that had downtime, oldest first. (Found from the data, not from
    the test's clock: on a loaded machine the crash may land an epoch later than planned.)"""
    return sorted((e for e in body["epochs"] if e["down_ms"] > 0), key=lambda e: e["epoch_start"])


async def test_downtime_beyond_the_sla_is_slashed_into_the_insurance_pool(
    tmp_path: Path,
) -> None:
    async with live_gateway(tmp_path) as gw, gw.client() as client:
        crash, blip, steady, zero = await asyncio.gather(
            Provider.staked(gw, tmp_path, "crash", sla_bps=9_900),
            Provider.staked(gw, tmp_path, "blip", sla_bps=5_000),
            Provider.staked(gw, tmp_path, "steady", sla_bps=9_900),
            Provider.staked(gw, tmp_path, "zero", sla_bps=0),
        )
        for provider in (crash, blip, steady, zero):
            await provider.connect()
        pool_before = await insurance_pool(client)
        for provider in (crash, blip, steady, zero):
            assert await bonded(client, provider) == DEFAULT_STAKE

        await next_epoch()  # early in an epoch, so the crash leaves most of it down
        await crash.crash()  # killed: no goodbye, never back
        await zero.crash()  # the same, but it promised nothing
        old = blip.connection
        await blip.crash()  # a blip: back at once...
        await blip.connect()
        await blip.connect()  # ...and a second socket racing the first, which then closes
        await old.close()

        now = await uptime(client, blip.id)
        assert now["current"]["state"] == "up" and now["current"]["connected"]
        # Both providers that vanished are reported for the epoch they went in, then for
        # the next one, which they missed whole; then they are dropped.
        for gone in (crash, zero):
            await poll(
                client,
                f"/v1/providers/{gone.id}/uptime",
                lambda b: b["current"] is None and len(b["epochs"]) >= 2,
            )
        crashed = await uptime(client, crash.id)
        *went, missed = with_downtime(crashed)
        assert (missed["up_ms"], missed["down_ms"], missed["breach"]) == (0, 1000, True)
        # The epoch it went in (unless it went exactly on a boundary): mostly down, normally.
        assert len(went) <= 1
        assert [e["epoch_start"] for e in went] == [missed["epoch_start"] - EPOCH_S][: len(went)]
        stake = DEFAULT_STAKE
        for row in [*went, missed]:
            assert row["sla_uptime_bps"] == 9_900
            assert row["breach"] == breached(row["up_ms"], row["down_ms"], 9_900)
            assert row["slashed"] == (stake * DOWNTIME_BPS // 10_000 if row["breach"] else 0)
            stake -= row["slashed"]
        taken = sum(e["slashed"] for e in crashed["epochs"])
        assert taken == DEFAULT_STAKE - stake > 0

        zeroed = await uptime(client, zero.id)
        assert [(e["up_ms"], e["down_ms"]) for e in with_downtime(zeroed)][-1] == (0, 1000)
        assert not any(e["breach"] or e["slashed"] for e in zeroed["epochs"])

        blipped = await poll(
            client,
            f"/v1/providers/{blip.id}/uptime",
            lambda b: with_downtime(b) != [],
        )
        for row in with_downtime(blipped):
            assert row["up_ms"] + row["down_ms"] <= 1000  # the racing sockets counted once
            assert not row["breach"] and row["slashed"] == 0 and row["sla_uptime_bps"] == 5_000

        steadied = await uptime(client, steady.id)
        assert steadied["epochs"] and steadied["current"]["state"] == "up"
        assert all(e["down_ms"] == 0 and e["slashed"] == 0 for e in steadied["epochs"])
        assert all(e["up_ms"] <= 1000 for e in steadied["epochs"])

        # An abandoned node is not slashed forever: nothing more after one epoch away.
        await next_epoch()
        assert (await uptime(client, crash.id))["epochs"] == crashed["epochs"]
        # The slash went from the crashed provider's stake to the insurance pool, nowhere else.
        assert await bonded(client, crash) == DEFAULT_STAKE - taken
        assert await insurance_pool(client) == pool_before + taken
        for provider in (blip, steady, zero):
            assert await bonded(client, provider) == DEFAULT_STAKE
        assert await journal_problems(gw) == []

        # The explorer heard the same epochs and downtime slashes as they happened.
        epochs = await poll(
            client,
            "/explorer/api/v1/epochs",
            lambda b: sum(e["slashed_units"] for e in b["data"]) == taken,
        )
        assert sum(e["breached"] for e in epochs["data"]) == sum(
            e["breach"] for e in crashed["epochs"]
        )
        assert all(e["providers"] == e["met"] + e["breached"] for e in epochs["data"])
        slashes = (await client.get("/explorer/api/v1/slashes")).json()["data"]
        downtime = [s for s in slashes if s["reason"] == "downtime"]
        assert {s["provider_id"] for s in downtime} == {crash.id}
        assert sum(s["slashed_units"] for s in downtime) == taken
        assert all(s["reference"].startswith(f"downtime:{crash.id}:") for s in downtime)
        assert "breached" in (await client.get("/explorer/epochs")).text
        bad = await client.get("/v1/providers/not-a-key/uptime")
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "provider_id"
        unknown = await uptime(client, "ab" * 32)
        assert unknown == {
            "object": "provider_uptime",
            "provider_id": "ab" * 32,
            "epoch_s": EPOCH_S,
            "current": None,
            "epochs": [],
        }
        for provider in (blip, steady):
            await provider.crash()


async def test_goodbye_drains_the_running_job_and_is_never_slashed(tmp_path: Path) -> None:
    async with live_gateway(tmp_path) as gw, gw.client() as client:
        leaver, other = await asyncio.gather(
            Provider.staked(gw, tmp_path, "leaver", sla_bps=9_900),
            Provider.staked(gw, tmp_path, "other", sla_bps=0),
        )
        peer = await leaver.connect(serve=False)
        pool_before = await insurance_pool(client)

        first = asyncio.create_task(client.post("/v1/chat/completions", json=chat_body()))
        job = await peer.recv()
        assert job["type"] == "job"
        await peer.send({"type": "goodbye", "reason": "maintenance"})
        reputation = f"/v1/providers/{leaver.id}/reputation"
        await poll(client, reputation, lambda b: b["models"].get(MODEL) == "leaving")
        left = await uptime(client, leaver.id)
        assert left["current"]["state"] == "left" and left["current"]["connected"]

        # New work goes to the other provider only; the leaver's running job still finishes.
        await other.connect()
        for _ in range(3):
            response = await client.post("/v1/chat/completions", json=chat_body())
            assert response.status_code == 200, response.text
            assert response.headers["x-tessera-provider"] == other.id
        with pytest.raises(TimeoutError):
            await peer.recv(timeout_s=0.3)
        await answer(peer, job)
        response = await first
        assert response.status_code == 200, response.text
        assert response.headers["x-tessera-provider"] == leaver.id

        await leaver.crash()  # the socket closes after the goodbye: no downtime
        start = await next_epoch()
        body = await poll(
            client,
            f"/v1/providers/{leaver.id}/uptime",
            lambda b: b["current"] is None and b["epochs"] != [],
        )
        await asyncio.sleep(EPOCH_S)  # one more epoch away: still nothing held against it
        body = await uptime(client, leaver.id)
        assert body["current"] is None
        assert all(e["epoch_start"] < start for e in body["epochs"])
        assert all(e["down_ms"] == 0 and not e["breach"] for e in body["epochs"])
        assert all(e["slashed"] == 0 for e in body["epochs"])
        assert await bonded(client, leaver) == DEFAULT_STAKE
        assert await insurance_pool(client) == pool_before
        assert await journal_problems(gw) == []
        await other.crash()
