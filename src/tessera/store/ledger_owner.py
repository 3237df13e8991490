"""One gateway owns a database's ledger at a time; another waits to take over, or leaves.

The book lives in one process's memory and its journal is written by one writer, so a
second gateway started on the same database would be wrong in every way at once: at
start it releases the holds it finds open (the first gateway's running requests, which
then answer unpaid), and its appends collide with the first's until one of them stops
with a journal conflict. So the owner takes a lock that the operating system or the
database frees when the owner dies, however it dies (SIGKILL included):

- PostgreSQL: a session advisory lock on a connection kept open for the owner's life
  (``application_name`` on that connection names the owner, for the next one's message);
- SQLite: ``flock`` on a file beside the database (only processes on one machine can
  share a SQLite file anyway), holding the owner's name.

A gateway that finds the lock taken stops with a message that names the owner, or, as a
standby, waits and takes over once the owner is gone: the journal it then replays is
complete, and the holds it releases are really orphaned.

A PostgreSQL session can also end under a live owner (a restarted server, a cut
connection, an administrator), and the owner only notices at its next check. Until then
its journal appends are fenced by the lock (:meth:`LedgerOwnerLock.write_fence`): each
checks in its own transaction that the session holding the lock is still this owner's, so
an owner that lost it cannot write beside the next one (see store/ledger.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from pathlib import Path
from typing import Protocol

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tessera.store.errors import translated
from tessera.store.ledger import JournalConflict, WriteFence

# pg_try_advisory_lock(int, int): ours is (0x7E55, 1); migrations use another key.
_PG_LOCK = (0x7E55, 1)
_OWNER_FILE_SUFFIX = ".ledger-owner"
_CHECK_TIMEOUT_S = 5.0
_HELD_BY = text(
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
    f"AND classid = {_PG_LOCK[0]} AND objid = {_PG_LOCK[1]} AND objsubid = 2 AND pid = :pid)"
)


class LedgerOwnerLock(Protocol):
    """The right to own a database's ledger, held until released or the holder dies."""

    async def try_acquire(self) -> bool:
        """Take the lock if it is free (never waits); True if this process holds it now."""
        ...

    async def holder(self) -> str | None:
        """Who holds the lock now, as it named itself; None if unknown or free."""
        ...

    async def still_held(self) -> bool:
        """False once a lock this process took is no longer its own (on PostgreSQL: its
        session ended, and another gateway may have taken the lock since)."""
        ...

    async def release(self) -> None:
        """Give the lock up (safe to call when not held)."""
        ...

    def write_fence(self) -> WriteFence | None:
        """What a journal append runs to prove it still writes for this lock's holder;
        None where the lock cannot be lost while its holder lives."""
        ...


def ledger_owner_lock(engine: AsyncEngine, owner: str) -> LedgerOwnerLock:
    """The lock for ``engine``'s database, held under the name ``owner``."""
    if engine.dialect.name == "sqlite":
        database = engine.url.database or ""
        return FileOwnerLock(Path(database + _OWNER_FILE_SUFFIX), owner)
    return PostgresOwnerLock(engine, owner)


class FileOwnerLock:
    """``flock`` on a file beside the SQLite database; the kernel frees it with the holder."""

    def __init__(self, path: Path, owner: str) -> None:
        self.path = path
        self.owner = owner
        self._fd: int | None = None

    async def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self.owner} (pid {os.getpid()})\n".encode(), 0)
        self._fd = fd
        return True

    async def holder(self) -> str | None:
        with contextlib.suppress(OSError):
            return self.path.read_text(encoding="utf-8", errors="replace").strip() or None
        return None

    async def still_held(self) -> bool:
        return self._fd is not None  # the kernel keeps it for as long as the descriptor

    def write_fence(self) -> None:
        return None  # a flock lasts as long as this process

    async def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.ftruncate(fd, 0)
            os.close(fd)  # closing the only descriptor frees the lock


class PostgresOwnerLock:
    """A session advisory lock on a dedicated connection; PostgreSQL frees it when that
    session ends (the holder exits, dies, or loses its connection)."""

    def __init__(self, engine: AsyncEngine, owner: str) -> None:
        self.engine = engine
        self.owner = owner
        self._conn: AsyncConnection | None = None
        self._pid: int | None = None  # the server process of the session holding the lock

    async def try_acquire(self) -> bool:
        if self._conn is not None:
            if await self.still_held():
                return True
            # Its session ended (and the lock with it): a claim no longer. Dropped before
            # trying again, or a replica that lost the lock would find it "held" and take
            # the ledger over beside the one that really holds it.
            await self.release()
        with translated(self.engine.url):
            conn = await self.engine.connect()
            try:
                got, pid = (
                    await conn.execute(
                        text("SELECT pg_try_advisory_lock(:a, :b), pg_backend_pid()"),
                        {"a": _PG_LOCK[0], "b": _PG_LOCK[1]},
                    )
                ).one()
                if got:  # the holding session names its owner, for the next one's message
                    await conn.execute(
                        text("SELECT set_config('application_name', :name, false)"),
                        {"name": f"tessera ledger owner: {self.owner}"[:63]},
                    )
                await conn.commit()
            except BaseException:
                await conn.invalidate()
                await conn.close()
                raise
        if not got:
            await conn.close()  # back to the pool: it holds nothing
            return False
        self._conn, self._pid = conn, int(pid)
        return True

    async def holder(self) -> str | None:
        stmt = text(
            "SELECT a.application_name FROM pg_locks l "
            "JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted "
            "AND l.classid = :a AND l.objid = :b AND l.objsubid = 2"
        )
        with translated(self.engine.url):
            async with self.engine.connect() as conn:
                name = (await conn.execute(stmt, {"a": _PG_LOCK[0], "b": _PG_LOCK[1]})).scalar()
        if not name:
            return None
        return str(name).removeprefix("tessera ledger owner: ")

    async def still_held(self) -> bool:
        conn = self._conn
        if conn is None:
            return False
        try:
            # The lock lives as long as the session; a session that answers still has it.
            await asyncio.wait_for(conn.execute(text("SELECT 1")), _CHECK_TIMEOUT_S)
            await conn.commit()
        except Exception:
            return False
        return True

    def write_fence(self) -> WriteFence:
        return self._fence

    def _fence(self, conn: Connection) -> None:
        """Roll the append back unless the lock is held by this owner's session now. Run
        after the append's inserts, whose table lock makes the next owner's
        ``wait_for_writers`` wait for this transaction's end: so either this append is in
        what the next owner replays, or it fails here."""
        pid = self._pid
        held = pid is not None and conn.execute(_HELD_BY, {"pid": pid}).scalar()
        if not held:
            raise JournalConflict(
                "this gateway no longer holds the ledger's ownership lock (its database "
                "session ended); nothing was written, and another gateway may own the "
                "ledger now"
            )

    async def release(self) -> None:
        conn, self._conn, self._pid = self._conn, None, None
        if conn is None:
            return
        # Never back to the pool: the session (and with it the lock) must end.
        with contextlib.suppress(Exception):
            await conn.invalidate()
        with contextlib.suppress(Exception):
            await conn.close()
