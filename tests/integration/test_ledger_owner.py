"""One gateway owns a database's ledger: the lock on SQLite (flock) and PostgreSQL
(a session advisory lock), and the standby that waits for it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import text

from tessera.errors import ConfigError, LedgerUnavailable
from tessera.gateway.bookkeeper import Bookkeeper
from tessera.gateway.ledger_ownership import own_ledger, watch_ownership
from tessera.ledger.book import BookPolicy
from tessera.store.engine import create_engine
from tessera.store.ledger import LedgerStore
from tessera.store.ledger_owner import ledger_owner_lock
from tessera.store.migrate import upgrade_to_head

from support.databases import fresh_postgres_database

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


@pytest.mark.postgres
async def test_an_owner_whose_session_ends_stops_moving_money(
    tmp_path: Path, postgres_admin_user: str
) -> None:
    """PostgreSQL ends the owner's session (a restart, a cut connection, here an
    administrator): the watcher sees the lock gone and the journal stops taking entries,
    since a standby may own the ledger by now."""
    async with fresh_postgres_database(postgres_admin_user) as url:
        await upgrade_to_head(url)
        engine, admin = create_engine(url), create_engine(url)
        lock = ledger_owner_lock(engine, "gw-owner")
        keeper, _ = await Bookkeeper.open(LedgerStore(engine), BookPolicy())
        try:
            assert await lock.try_acquire()
            assert await lock.still_held()
            await keeper.mint("acct-1", 10, "dep-1")
            lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()

            def on_lost(why: str) -> None:
                keeper.writer.stop_writing(why)
                lost.set_result(why)

            watcher = asyncio.create_task(watch_ownership(lock, on_lost, 0.05))
            await asyncio.sleep(0.2)
            assert not lost.done()  # held: nothing happens
            async with admin.connect() as conn:
                ended = (
                    await conn.execute(
                        text(
                            "SELECT pg_terminate_backend(pid) FROM pg_locks "
                            "WHERE locktype = 'advisory' AND classid = 32341 AND objid = 1 "
                            "AND objsubid = 2"
                        )
                    )
                ).scalar()
            assert ended
            why = await asyncio.wait_for(lost, 10)
            await watcher
            assert "no longer holds the ledger's ownership lock" in why
            with pytest.raises(LedgerUnavailable):
                await keeper.mint("acct-1", 10, "dep-2")
            assert [e.reference for e in await LedgerStore(admin).load()] == ["dep-1"]
            other = ledger_owner_lock(admin, "gw-next")
            assert await other.try_acquire()  # free for a standby
            # The old owner's dead session is no claim: trying again (as a replica that lost
            # the lock watches for a takeover) must not report the lock as its own while
            # another holds it, or two replicas would own one ledger.
            assert not await lock.try_acquire()
            assert not await lock.still_held()
            await other.release()
            assert await lock.try_acquire()  # free again: the old owner may take it back
        finally:
            await lock.release()
            await keeper.close()
            await engine.dispose()
            await admin.dispose()


async def test_a_file_lock_is_held_until_released(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'tessera.db'}")
    lock = ledger_owner_lock(engine, "gw-owner")
    try:
        assert not await lock.still_held()
        assert await lock.try_acquire()
        assert await lock.still_held()
        assert (tmp_path / "tessera.db.ledger-owner").stat().st_mode & 0o777 == 0o600
        await lock.release()
        assert not await lock.still_held()
    finally:
        await lock.release()
        await engine.dispose()
