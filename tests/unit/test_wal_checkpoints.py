"""The hot writer's commits never checkpoint; a thread of its own keeps the WAL short."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

from sqlalchemy import Connection, text

from tessera.store import batched
from tessera.store.engine import create_engine, database_url_for
from tessera.store.wal_checkpoints import CheckpointPolicy, WalCheckpointer

PAGE = 4096


def _wal_frames(path: Path) -> tuple[int, int]:
    """(frames in the WAL, frames of it already in the database), from a fresh connection."""
    conn = sqlite3.connect(path)
    try:
        _, log, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return log, copied
    finally:
        conn.close()


def _writer(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute(f"PRAGMA journal_size_limit={256 * PAGE}")  # as the hot writer sets one
    conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, body BLOB)")
    return conn


def _commit_pages(conn: sqlite3.Connection, pages: int) -> None:
    """One transaction adding about ``pages`` pages (overflow pages of one blob)."""
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO t (body) VALUES (?)", (b"x" * (PAGE * pages - 200),))
    conn.execute("COMMIT")


def test_without_the_checkpointer_the_wal_only_grows(tmp_path: Path) -> None:
    """What the thread is for: with checkpoints off in commits, nothing else copies the WAL."""
    db = tmp_path / "db.sqlite"
    conn = _writer(db)
    for _ in range(300):
        _commit_pages(conn, 2)
    log, copied = _wal_frames(db)
    conn.close()
    assert log >= 600
    assert copied == log  # the fresh connection's own checkpoint: the frames were all there


def _busy_writer(
    db: Path, policy: CheckpointPolicy, commits: int
) -> tuple[WalCheckpointer, int, int]:
    """A writer that is never idle, catching up when asked: (its checkpointer, largest
    WAL seen, frames in the WAL at the end), in pages."""
    conn = _writer(db)  # the file first, as the engine makes it before any writer
    checkpointer = WalCheckpointer(str(db), policy)
    largest = 0
    try:
        for _ in range(commits):
            _commit_pages(conn, 2)
            checkpointer.committed()
            if checkpointer.writer_should_checkpoint(idle=False):
                checkpointer.writer_catch_up(
                    lambda: conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                )
            largest = max(largest, db.with_name(db.name + "-wal").stat().st_size // PAGE)
        return checkpointer, largest, _wal_frames(db)[0]
    finally:
        checkpointer.close()
        conn.close()


def test_a_writer_never_idle_still_lets_the_wal_start_over(tmp_path: Path) -> None:
    """The thread never gets to run here (its first turn is an hour away): the writer's
    own count brings a catch-up every ``stale_commits`` commits, and the WAL stays short."""
    db = tmp_path / "db.sqlite"
    quiet = CheckpointPolicy(every_commits=10**9, every_s=3600, stale_commits=50)
    checkpointer, largest, log = _busy_writer(db, quiet, 1_500)  # some 4,500 frames in all
    assert checkpointer.checkpoints <= 1  # at most the last one, on close
    assert checkpointer.catch_ups == 1_500 // 50
    assert largest < 400
    assert log < 400


def test_the_thread_reports_the_wal_and_the_writer_catches_up_at_the_limit(
    tmp_path: Path,
) -> None:
    db = tmp_path / "db.sqlite"
    policy = CheckpointPolicy(every_commits=20, every_s=0.05, restart_pages=100, stale_commits=100)
    checkpointer, largest, log = _busy_writer(db, policy, 1_500)
    assert checkpointer.checkpoints >= 1
    assert checkpointer.catch_ups >= 1
    # How far the WAL gets past the limit depends on how late the thread reports (or,
    # starved, after how many commits the writer goes by its own count): never all of it.
    assert log < 1_500  # -1 when the thread's checkpoint was running at that moment
    assert largest < 1_500


def test_idle_checkpointer_copies_everything_and_stops(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    conn = _writer(db)
    checkpointer = WalCheckpointer(str(db), CheckpointPolicy(every_commits=1_000, every_s=0.02))
    try:
        for _ in range(50):
            _commit_pages(conn, 1)
            checkpointer.committed()
        # Fewer commits than every_commits: the timer alone brings the checkpoint.
        done = threading.Event()
        for _ in range(250):
            if checkpointer.checkpoints:
                done.set()
                break
            threading.Event().wait(0.02)
        assert done.is_set()
        assert checkpointer.last is not None
        busy, log, copied = checkpointer.last
        assert busy == 0 and copied == log
    finally:
        checkpointer.close()
        conn.close()
    assert not checkpointer._thread.is_alive()


def test_hot_writer_commits_without_checkpoints_and_its_thread_keeps_up(tmp_path: Path) -> None:
    """Through ``in_transaction`` on a real gateway database: the writer's connection has
    checkpoints off, other connections keep SQLite's default, and the WAL gets copied."""
    engine = create_engine(database_url_for(tmp_path))

    async def main() -> tuple[int, int, batched.WalCheckpointer | None]:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)"))
            others = (await conn.execute(text("PRAGMA wal_autocheckpoint"))).scalar_one()

        def own(connection: Connection) -> int:
            return int(connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one())

        hot = await batched.in_transaction(engine, own)

        def insert(connection: Connection) -> None:
            connection.execute(text("INSERT INTO t (body) VALUES (:b)"), {"b": b"y" * 6000})

        for _ in range(250):
            await batched.in_transaction(engine, insert)
        writer = batched._writer_for(engine)
        for _ in range(250):
            if writer.checkpointer is not None and writer.checkpointer.checkpoints:
                break
            await asyncio.sleep(0.02)
        return hot, others, writer.checkpointer

    try:
        hot, others, checkpointer = asyncio.run(main())
    finally:
        batched.close_batched(engine)
        asyncio.run(engine.dispose())
    assert hot == 0
    assert others == 1000
    assert checkpointer is not None and checkpointer.checkpoints >= 1


def test_checkpointer_never_creates_a_database(tmp_path: Path) -> None:
    """The engine creates the file private (0600); the thread only opens what exists."""
    missing = tmp_path / "gone.sqlite"
    checkpointer = WalCheckpointer(str(missing))
    checkpointer.committed()
    checkpointer.close()
    assert not missing.exists()
    assert checkpointer.checkpoints == 0
