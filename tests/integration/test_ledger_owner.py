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


_END_OWNER_SESSION = text(
    "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
    "AND classid = 32341 AND objid = 1 AND objsubid = 2"
)


@pytest.mark.postgres
async def test_an_owner_that_lost_its_lock_cannot_append_beside_the_next_one(
    postgres_admin_user: str,
) -> None:
    """The owner's lock session ends and the next owner takes the lock before the old one
    has checked (its watcher polls every few seconds, here every minute): the old owner's
    next append is refused by the fence in its own transaction, which has its watcher check
    the lock at once; the new owner's goes on, and the journal stays one journal."""
    async with fresh_postgres_database(postgres_admin_user) as url:
        await upgrade_to_head(url)
        engine_a, engine_b, admin = create_engine(url), create_engine(url), create_engine(url)
        lock_a = ledger_owner_lock(engine_a, "gw-a")
        lock_b = ledger_owner_lock(engine_b, "gw-b")
        keepers: list[Bookkeeper] = []
        try:
            assert await lock_a.try_acquire()
            old, _ = await Bookkeeper.open(
                LedgerStore(engine_a, fence=lock_a.write_fence()), BookPolicy()
            )
            keepers.append(old)
            check_now = asyncio.Event()
            old.writer.stopped.append(lambda why: check_now.set())
            lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            watcher = asyncio.create_task(
                watch_ownership(lock_a, lost.set_result, 60.0, check_now=check_now)
            )
            await old.mint("acct-1", 10, "dep-1")  # fenced, and held: stored
            async with admin.connect() as conn:
                assert (await conn.execute(_END_OWNER_SESSION)).scalar()
            assert await lock_b.try_acquire()
            store_b = LedgerStore(engine_b, fence=lock_b.write_fence())
            await store_b.wait_for_writers()
            new, _ = await Bookkeeper.open(store_b, BookPolicy())
            keepers.append(new)

            with pytest.raises(LedgerUnavailable):
                await old.mint("acct-1", 5, "dep-2")
            assert "no longer holds the ledger's ownership lock" in (old.writer.failure or "")
            assert "no longer holds" in await asyncio.wait_for(lost, 10)  # not in a minute
            await watcher
            await new.mint("acct-1", 7, "dep-3")
            with pytest.raises(LedgerUnavailable):  # the old writer stays stopped
                await old.mint("acct-1", 5, "dep-4")

            stored = LedgerStore(admin)
            assert [(e.entry_id, e.reference) for e in await stored.load()] == [
                (1, "dep-1"),
                (2, "dep-3"),
            ]
            assert await stored.check() == []
        finally:
            for keeper in keepers:
                await keeper.close()
            await lock_a.release()
            await lock_b.release()
            for engine in (engine_a, engine_b, admin):
                await engine.dispose()


@pytest.mark.postgres
async def test_the_next_owner_waits_for_an_append_still_in_flight(
    postgres_admin_user: str,
) -> None:
    """An append that was under way when the lock changed hands (it passed its fence, and
    has not committed yet) ends before the next owner replays: stored and replayed, or
    rolled back and never stored."""
    async with fresh_postgres_database(postgres_admin_user) as url:
        await upgrade_to_head(url)
        engine, writer = create_engine(url), create_engine(url)
        try:
            for outcome in ("commit", "rollback"):
                async with writer.connect() as conn:
                    await conn.execute(
                        text(
                            "INSERT INTO ledger_entries (entry_id, kind, reference, at, memo) "
                            "VALUES (1, 'mint', :ref, 0, '{}')"
                        ),
                        {"ref": f"in-flight-{outcome}"},
                    )
                    waiting = asyncio.create_task(LedgerStore(engine).wait_for_writers())
                    await asyncio.sleep(0.3)
                    assert not waiting.done()  # the open transaction holds it back
                    await (conn.commit() if outcome == "commit" else conn.rollback())
                    await asyncio.wait_for(waiting, 10)
                    if outcome == "commit":
                        await conn.execute(text("DELETE FROM ledger_entries"))
                        await conn.commit()
        finally:
            await engine.dispose()
            await writer.dispose()


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
