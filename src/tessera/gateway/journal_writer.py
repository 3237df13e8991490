"""Group commit for the journal: many requests' entries, one transaction, in order.

The book posts in memory first (atomic on the event loop), then hands each entry here.
Entries are written strictly in entry-id order, so the database always holds a prefix
of the in-memory journal. ``submit`` returns a future that completes when the entry is
durable; a request awaits it before work starts (the hold) and before it reports its
cost (the capture). Entries arriving while a batch is being written form the next batch,
so throughput grows with concurrency instead of paying one commit per entry.

Transient database errors are retried with capped backoff and keep order. A permanent
error (a gap: another gateway writing this journal) fails every waiter and the writer
refuses further work, because memory and disk would otherwise drift apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from tessera.ledger.journal import Entry
from tessera.store.errors import StoreError

log = logging.getLogger("tessera.gateway.journal")


class JournalStore(Protocol):
    async def append(self, entries: list[Entry]) -> None: ...


class JournalUnavailable(Exception):
    """The journal cannot be written; money must not move until an operator looks."""


class JournalWriter:
    def __init__(self, store: JournalStore, *, max_backoff_s: float = 2.0) -> None:
        self._store = store
        self._max_backoff_s = max_backoff_s
        self._pending: list[Entry] = []
        self._batch_done: asyncio.Future[None] | None = None
        self._inflight: asyncio.Future[None] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.failure: str | None = None
        self.written = 0
        self.batches = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def submit(self, entry: Entry) -> asyncio.Future[None]:
        """Queue ``entry``; the future completes once it (and all before it) is stored."""
        if self.failure is not None:
            raise JournalUnavailable(self.failure)
        self._pending.append(entry)
        if self._batch_done is None:
            self._batch_done = asyncio.get_running_loop().create_future()
        self._wake.set()
        return self._batch_done

    def flush_future(self) -> asyncio.Future[None]:
        """Completes once everything submitted so far is stored."""
        for future in (self._batch_done, self._inflight):
            if future is not None:
                return future
        done = asyncio.get_running_loop().create_future()
        if self.failure is not None:
            done.set_exception(JournalUnavailable(self.failure))
        else:
            done.set_result(None)
        return done

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="journal-writer")

    async def close(self) -> None:
        """Write everything queued, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._pending:
                if self._closing:
                    return
                continue
            batch, done = self._pending, self._batch_done
            self._pending, self._batch_done = [], None
            assert done is not None
            self._inflight = done
            await self._write(batch, done)
            self._inflight = None
            if self._pending:
                self._wake.set()
            elif self._closing:
                return

    async def _write(self, batch: list[Entry], done: asyncio.Future[None]) -> None:
        delay = 0.05
        retries_left_at_close = 5  # a closing gateway tries a few more times, then gives up
        while True:
            try:
                await self._store.append(batch)
            except StoreError as exc:
                if self._closing:
                    retries_left_at_close -= 1
                if exc.retryable and retries_left_at_close > 0:
                    log.warning("journal write failed (%s); retrying in %.2fs", exc.message, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._max_backoff_s)
                    continue
                self._fail(f"the journal could not be written: {exc.message}", done)
                return
            except Exception as exc:
                log.exception("journal writer failed")
                self._fail(f"the journal writer failed: {exc!r}", done)
                return
            self.written += len(batch)
            self.batches += 1
            if not done.done():
                done.set_result(None)
            return

    def _fail(self, why: str, done: asyncio.Future[None]) -> None:
        self.failure = why
        log.error("%s; refusing further ledger work", why)
        for future in (done, self._batch_done):
            if future is not None and not future.done():
                future.set_exception(JournalUnavailable(why))
                # Waiters may have gone (a cancelled request): mark it seen either way.
                with contextlib.suppress(BaseException):
                    future.exception()
        self._pending = []
        self._batch_done = None
