"""A replica spends through the ledger owner over a real NATS server (a private one).

The owner and the replica have their own connections, as two gateway processes would; the
owner's connection then goes away and comes back while the replica is waiting to hold.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tessera.gateway.bookkeeper import Bookkeeper
from tessera.gateway.ledger_service import LedgerService
from tessera.gateway.nats_bus import NatsBus
from tessera.gateway.payments import Payer
from tessera.gateway.remote_money import RemoteMoney
from tessera.ledger.accounts import TOKEN
from tessera.ledger.book import BookPolicy, ConsumerView
from tessera.market.registry import ProviderRegistry
from tessera.market.routing import RouteRequest
from tessera.market.stake_policy import StakePolicy
from tessera.protocol.wire import (
    Capabilities,
    ChatMessage,
    Hardware,
    Job,
    ModelOffer,
    SamplingParams,
)
from tessera.store.engine import create_engine, database_url_for
from tessera.store.ledger import LedgerStore
from tessera.store.migrate import upgrade_to_head

from support.nats_server import NatsServer

pytestmark = pytest.mark.integration

PROVIDER = "ab" * 32
FUNDS = 10 * TOKEN
PAYER = Payer("acct_00000000000000a1", "key_0000000000000001")
OFFER = ModelOffer(
    name="m",
    weights_sha256="ab" * 32,
    kind="text",
    context_length=1024,
    price_input_per_mtok=1_000 * 1_000_000,
    price_output_per_mtok=2_000 * 1_000_000,
)
JOB = Job(
    job_id="j1",
    model="m",
    kind="chat",
    messages=[ChatMessage(role="user", content="hi")],
    params=SamplingParams(max_tokens=8),
)


def providers() -> ProviderRegistry:
    registry = ProviderRegistry()
    caps = Capabilities(
        public_key=PROVIDER,
        agent_version="test",
        models=[OFFER],
        hardware=Hardware(cpu="test", cpu_cores=1, ram_bytes=1),
        region="US",
        max_concurrent_jobs=4,
    )
    registry.add(PROVIDER, caps, now=0.0)
    return registry


async def test_hold_and_capture_over_nats_survive_the_owner_reconnecting(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats").start()
    url = database_url_for(tmp_path / "data")
    await upgrade_to_head(url)
    engine = create_engine(url)
    keeper, _ = await Bookkeeper.open(LedgerStore(engine), BookPolicy())
    owner = await NatsBus.connect(server.url, "owner")
    replica = await NatsBus.connect(server.url, "replica")
    service = LedgerService(owner, keeper, "owner")
    money = RemoteMoney(replica, providers(), StakePolicy(), replica_id="replica")
    try:
        await keeper.mint(PAYER.account_id, FUNDS, "deposit-1")
        await service.start()
        await money.start()
        charge = await money.reserve(PAYER, "req-1", JOB, RouteRequest(model="m"))
        assert charge.held > 0
        assert keeper.book.consumer(PAYER.account_id) == ConsumerView(
            FUNDS - charge.held, charge.held
        )
        cost = money.capture(charge, OFFER, PROVIDER, 3, 1)
        await money.stored(charge)
        assert keeper.book.consumer(PAYER.account_id) == ConsumerView(FUNDS - cost, 0)

        # The owner's connection goes; a hold asked meanwhile waits for it to come back.
        await service.close()
        await owner.close()
        waiting = asyncio.create_task(money.reserve(PAYER, "req-2", JOB, RouteRequest(model="m")))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        owner = await NatsBus.connect(server.url, "owner")
        service = LedgerService(owner, keeper, "owner")
        await service.start()
        again = await asyncio.wait_for(waiting, 5)
        assert again.held == charge.held
        money.release(again, "done")
        await money.stored(again)
        assert await money.fetch_balance(PAYER.account_id) == ConsumerView(FUNDS - cost, 0)
    finally:
        await money.close()
        await service.close()
        await replica.close()
        await owner.close()
        await keeper.close()
        await engine.dispose()
        server.stop()
