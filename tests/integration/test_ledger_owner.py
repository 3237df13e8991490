"""One gateway owns a database's ledger: the lock on SQLite (flock) and PostgreSQL
(a session advisory lock), and the standby that waits for it."""

from __future__ import annotations

import asyncio

import pytest

from tessera.errors import ConfigError
from tessera.gateway.ledger_ownership import own_ledger
from tessera.store.engine import create_engine
from tessera.store.ledger_owner import ledger_owner_lock

pytestmark = pytest.mark.integration


async def test_one_owner_at_a_time_and_the_next_after_it(database_url: str) -> None:
    first_engine, second_engine = create_engine(database_url), create_engine(database_url)
    first = ledger_owner_lock(first_engine, "gw-first")
    second = ledger_owner_lock(second_engine, "gw-second")
    try:
        assert await first.try_acquire()
        assert await first.try_acquire()  # held already: still ours
        assert not await second.try_acquire()
        assert (await second.holder() or "").startswith("gw-first")
        await first.release()
        assert await second.try_acquire()
        assert (await first.holder() or "").startswith("gw-second")
        assert not await first.try_acquire()
    finally:
        await first.release()
        await second.release()
        await first_engine.dispose()
        await second_engine.dispose()


async def test_a_second_gateway_is_refused_naming_the_owner(database_url: str) -> None:
    engines = [create_engine(database_url) for _ in range(2)]
    owner = ledger_owner_lock(engines[0], "gw-owner")
    other = ledger_owner_lock(engines[1], "gw-other")
    try:
        await own_ledger(owner, standby=False, poll_s=0.05)
        with pytest.raises(ConfigError, match=r"gw-owner.*--standby"):
            await own_ledger(other, standby=False, poll_s=0.05)
    finally:
        await owner.release()
        await other.release()
        for engine in engines:
            await engine.dispose()


async def test_a_standby_takes_over_when_the_owner_goes(database_url: str) -> None:
    engines = [create_engine(database_url) for _ in range(2)]
    owner = ledger_owner_lock(engines[0], "gw-owner")
    standby = ledger_owner_lock(engines[1], "gw-standby")
    try:
        await own_ledger(owner, standby=False, poll_s=0.05)
        waiting = asyncio.create_task(own_ledger(standby, standby=True, poll_s=0.05))
        await asyncio.sleep(0.3)
        assert not waiting.done()  # the owner is still there
        await owner.release()
        await asyncio.wait_for(waiting, 5)
        assert not await owner.try_acquire()
    finally:
        await owner.release()
        await standby.release()
        for engine in engines:
            await engine.dispose()
