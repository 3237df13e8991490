"""Run a batch of statements as one transaction, in one hop off the event loop.

Through SQLAlchemy's async layer every DBAPI call of every statement is its own trip to
aiosqlite's worker thread and back (a queue, a thread wake-up, a callback on the loop):
a journal batch of six statements cost some thirty of them, and under load aiosqlite's
threads took a third of the gateway's CPU. The hot writers (the journal, the request log,
receipts) instead write their batch as one plain function over a synchronous connection:

- SQLite: a synchronous twin of the async engine (the same file, pragmas and BEGIN mode)
  owned by one dedicated thread, so the whole transaction is one trip;
- PostgreSQL: the async engine's own connection through ``run_sync``, where every
  statement is a network round trip anyway.

The same Core statements run either way, so the two databases keep one code path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, event
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import StaticPool

from tessera.store.engine import sqlite_hooks
from tessera.store.wal_checkpoints import WalCheckpointer

T = TypeVar("T")

log = logging.getLogger("tessera.store.batched")


_Work = tuple[Callable[[Connection], Any], dict[str, Any], asyncio.Future[Any]]


class _SqliteWriter:
    """One thread, one connection: the twin engine's writes, in submission order.

    A plain thread on a SimpleQueue rather than a ThreadPoolExecutor: the executor's
    locks and idle semaphore showed up as a sixth of the gateway's CPU under load."""

    def __init__(self, engine: AsyncEngine) -> None:
        url = engine.url.set(drivername="sqlite+pysqlite")
        # StaticPool: the one connection lives on the one thread that uses it.
        self.engine: Engine = create_sync_engine(
            url, poolclass=StaticPool, connect_args={"check_same_thread": False}
        )
        sqlite_hooks(self.engine)
        self.checkpointer = _checkpointer_for(self.engine)
        self._queue: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="tessera-sqlite", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[Connection], T], options: dict[str, Any]) -> asyncio.Future[T]:
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put((fn, options, done))
        return done

    def _serve(self) -> None:
        while (work := self._queue.get()) is not None:
            fn, options, done = work
            result: Any = None
            error: BaseException | None = None
            try:
                result = self._run(fn, options)
                if self.checkpointer is not None:
                    self.checkpointer.committed()
            except BaseException as exc:  # handed to the waiting coroutine
                error = exc
            with contextlib.suppress(RuntimeError):  # its event loop is already closed
                done.get_loop().call_soon_threadsafe(_settle, done, result, error)
            checkpointer = self.checkpointer
            if checkpointer is not None and checkpointer.writer_should_checkpoint(
                idle=self._queue.empty()
            ):
                self._catch_up(checkpointer)

    def _catch_up(self, checkpointer: WalCheckpointer) -> None:
        """Copy the rest of the WAL from this thread, where nothing commits meanwhile, so
        that the next commit starts it over (see ``wal_checkpoints.py``)."""

        def checkpoint() -> tuple[int, int, int]:
            with self.engine.connect() as conn:
                row = conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one()
            return int(row[0]), int(row[1]), int(row[2])

        try:
            checkpointer.writer_catch_up(checkpoint)
        except Exception as exc:  # the next transaction's own error will say more
            log.warning("the writer's checkpoint failed: %s", exc)

    def _run(self, fn: Callable[[Connection], T], options: dict[str, Any]) -> T:
        with self.engine.connect() as conn:
            conn = conn.execution_options(**options) if options else conn
            with conn.begin():
                return fn(conn)

    def close(self) -> None:
        self._queue.put(None)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        if self.checkpointer is not None:
            self.checkpointer.close()
        self.engine.dispose()


def _checkpointer_for(engine: Engine) -> WalCheckpointer | None:
    """The writer's commits leave checkpoints to a thread of their own (see
    ``wal_checkpoints.py``); None for a database without a file (in memory)."""
    path = engine.url.database
    if not path or path == ":memory:" or "mode=memory" in path:
        return None

    checkpointer = WalCheckpointer(path)
    event.listen(
        engine,
        "connect",
        lambda dbapi_connection, _record: checkpointer.configure_writer(dbapi_connection),
    )
    return checkpointer


def _settle(done: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if done.cancelled():
        return  # the waiter left; the transaction's outcome stands either way
    if exc is not None:
        done.set_exception(exc)
    else:
        done.set_result(result)


_writers: weakref.WeakKeyDictionary[AsyncEngine, _SqliteWriter] = weakref.WeakKeyDictionary()
_writers_lock = threading.Lock()


def _writer_for(engine: AsyncEngine) -> _SqliteWriter:
    with _writers_lock:
        writer = _writers.get(engine)
        if writer is None:
            writer = _writers[engine] = _SqliteWriter(engine)
            # The twin goes when its engine does (tests open many engines).
            weakref.finalize(engine, writer.close)
        return writer


async def in_transaction(engine: AsyncEngine, fn: Callable[[Connection], T], **options: Any) -> T:
    """``fn(connection)`` inside one transaction, committed when it returns; its result.

    ``options`` are execution options (for example the SQLite BEGIN mode)."""
    if engine.dialect.name == "sqlite":
        # Shielded: a cancelled caller must not leave the outcome of a commit unknown to
        # the thread; the caller sees CancelledError and the transaction still completes.
        return await asyncio.shield(_writer_for(engine).submit(fn, options))
    async with engine.connect() as conn:
        if options:
            await conn.execution_options(**options)
        async with conn.begin():
            return await conn.run_sync(fn)


def close_batched(engine: AsyncEngine) -> None:
    """Close ``engine``'s SQLite twin now (before disposing of the engine)."""
    with _writers_lock:
        writer = _writers.pop(engine, None)
    if writer is not None:
        writer.close()
