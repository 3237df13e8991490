"""Group commit for the journal: many requests' entries, one transaction, in order.

The book posts in memory first (atomic on the event loop), then hands each entry here.
Entries are written strictly in entry-id order, so the database always holds a prefix
of the in-memory journal. ``submit`` returns a future that completes (with the entry as
stored) when the entry is durable; a request awaits it before work starts (the hold) and
before it reports its cost (the capture). Entries arriving while a batch is being written
form the next batch, so throughput grows with concurrency instead of paying one commit
per entry. An entry nobody will wait for soon (a capture posted after its answer was sent)
may *linger*: it goes with the next entry submitted, or alone when its time is up, so at
one request at a time a capture and the next request's hold share a transaction instead of
paying one each. Waiting for any entry (``hurry``) ends the lingering at once.

Transient database errors are retried with capped backoff and keep order. When the store
refuses a batch for good, the writer bisects it to find the one entry it refuses, stores
the entries before it, and hands the refused entry and every later one to ``refused``
(the bookkeeper), which takes them back from memory and posts the later ones again under
new ids. Only the refused entry's caller (and any later entry that no longer holds
without it) gets an error; memory never keeps an entry the store refused, and the writer
goes on. Only a journal conflict (another gateway writing this journal), or an owner that
cannot take entries back, stops the writer: then every waiter fails and no money moves
until an operator restarts the gateway and the stored journal wins.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from tessera.ledger.journal import Entry, LedgerError
from tessera.store.errors import StoreError
from tessera.store.ledger import JournalConflict

log = logging.getLogger("tessera.gateway.journal")

# (refused entry, the entries posted after it, in order) -> each later entry as posted
# again, or why it could not be.
Refused = Callable[[Entry, list[Entry]], list[Entry | LedgerError]]


class JournalStore(Protocol):
    async def append(self, entries: list[Entry]) -> None: ...


class JournalUnavailable(Exception):
    """The journal cannot be written; money must not move until an operator looks."""


class JournalRefused(JournalUnavailable):
    """The store refused this one entry (or it no longer holds without a refused one);
    it was taken back from memory and the journal goes on without it."""


@dataclass(slots=True)
class _Item:
    entry: Entry
    done: asyncio.Future[Entry]


class JournalWriter:
    def __init__(
        self,
        store: JournalStore,
        *,
        max_backoff_s: float = 2.0,
        refused: Refused | None = None,
        stored: Callable[[int], None] | None = None,
    ) -> None:
        """``refused`` takes refused entries back (see the module docstring); without it
        a refusal stops the writer. ``stored(entry_id)`` hears each durable prefix."""
        self._store = store
        self._max_backoff_s = max_backoff_s
        self.refused = refused
        self.stored = stored
        self._pending: list[_Item] = []
        self._inflight: list[_Item] = []
        self._wake = asyncio.Event()
        self._linger: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.failure: str | None = None
        # Called once, with why, when the writer stops for good (see ``_fail``).
        self.stopped: list[Callable[[str], None]] = []
        self.written = 0
        self.batches = 0
        self.refusals = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def submit(self, entry: Entry, linger_s: float = 0.0) -> asyncio.Future[Entry]:
        """Queue ``entry``; the future completes with it once it (and all before it) is
        stored, or fails with JournalRefused / JournalUnavailable. With ``linger_s``, the
        write may wait that long for another entry to share its transaction."""
        if self.failure is not None:
            raise JournalUnavailable(self.failure)
        loop = asyncio.get_running_loop()
        item = _Item(entry, loop.create_future())
        self._pending.append(item)
        if linger_s <= 0:
            self._wake.set()
        elif self._linger is None and not self._wake.is_set():
            self._linger = loop.call_later(linger_s, self._wake.set)
        return item.done

    def hurry(self) -> None:
        """Write what is pending now: somebody waits for it."""
        if self._pending:
            self._wake.set()

    def flush_future(self) -> asyncio.Future[None]:
        """Completes once everything submitted so far is stored or refused; fails if the
        writer stopped."""
        self.hurry()
        waiting = [item.done for item in (*self._inflight, *self._pending)]
        if not waiting:
            done = asyncio.get_running_loop().create_future()
            if self.failure is not None:
                done.set_exception(JournalUnavailable(self.failure))
            else:
                done.set_result(None)
            return done
        return asyncio.ensure_future(self._settled(waiting))

    async def _settled(self, waiting: Sequence[asyncio.Future[Entry]]) -> None:
        await asyncio.gather(*waiting, return_exceptions=True)
        if self.failure is not None:
            raise JournalUnavailable(self.failure)

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
            if self._linger is not None:
                self._linger.cancel()
                self._linger = None
            if not self._pending:
                if self._closing:
                    return
                continue
            self._inflight, self._pending = self._pending, []
            await self._write(self._inflight)
            self._inflight = []
            if self._pending:
                self._wake.set()
            elif self._closing:
                return

    async def _write(self, batch: list[_Item]) -> None:
        """Store ``batch``; on a refusal, bisect to the one entry refused."""
        start, end = 0, len(batch)
        error = await self._append(batch)
        while True:
            if error is None:
                self._done(batch[start:end])
                start, end = end, len(batch)
                if start == end:
                    return
            elif isinstance(error, JournalConflict) or error.retryable or self.refused is None:
                # Not this entry's fault (another writer, or a store still down at close).
                self._fail(f"the journal could not be written: {error.message}", batch[start:])
                return
            elif end - start == 1:
                self._refuse(self.refused, batch, start, error)
                return
            else:
                end = start + (end - start) // 2
            error = await self._append(batch[start:end])

    async def _append(self, items: Sequence[_Item]) -> StoreError | None:
        """Append ``items``, retrying transient errors; the error that stayed, or None."""
        delay = 0.05
        retries_left_at_close = 5  # a closing gateway tries a few more times, then gives up
        while True:
            try:
                await self._store.append([item.entry for item in items])
            except StoreError as exc:
                if self._closing:
                    retries_left_at_close -= 1
                if exc.retryable and retries_left_at_close > 0:
                    log.warning("journal write failed (%s); retrying in %.2fs", exc.message, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._max_backoff_s)
                    continue
                return exc
            except Exception as exc:
                log.exception("journal store failed")
                return StoreError(f"the journal store failed: {exc!r}")
            return None

    def _done(self, items: Sequence[_Item]) -> None:
        if not items:
            return
        self.written += len(items)
        self.batches += 1
        if self.stored is not None:
            self.stored(items[-1].entry.entry_id)
        for item in items:
            if not item.done.done():
                item.done.set_result(item.entry)

    def _refuse(
        self, take_back: Refused, batch: list[_Item], index: int, error: StoreError
    ) -> None:
        """The store refuses ``batch[index]`` for good: take it and everything after it
        back from memory, post the later ones again and queue them in order."""
        refused, later = batch[index], [*batch[index + 1 :], *self._pending]
        self._pending = []
        try:
            outcomes = take_back(refused.entry, [item.entry for item in later])
        except Exception as exc:
            log.exception("could not take back refused journal entry %d", refused.entry.entry_id)
            self._fail(f"a refused entry could not be taken back: {exc!r}", [refused, *later])
            return
        self.refusals += 1
        entry = refused.entry
        log.error(
            "the journal refused entry %d (%s %s): %s; taken back, %d later entr(ies) re-posted",
            entry.entry_id,
            entry.kind,
            entry.reference[:80],
            error.message,
            len(later),
        )
        _reject(refused.done, JournalRefused(f"the journal refused this entry: {error.message}"))
        for item, outcome in zip(later, outcomes, strict=True):
            if isinstance(outcome, Entry):
                item.entry = outcome
                self._pending.append(item)
            else:
                why = f"it no longer holds without a refused entry: {outcome}"
                _reject(item.done, JournalRefused(why))
        if self._pending:
            self._wake.set()

    def stop_writing(self, why: str) -> None:
        """Refuse every entry from now on (and those waiting), as a journal conflict does:
        for when this process may no longer be the journal's only writer."""
        if self.failure is None:
            self._fail(why, [])

    def _fail(self, why: str, items: Sequence[_Item]) -> None:
        first = self.failure is None
        self.failure = why
        log.error("%s; refusing further ledger work", why)
        for item in (*items, *self._pending):
            _reject(item.done, JournalUnavailable(why))
        self._pending = []
        for hear in self.stopped if first else ():
            hear(why)


def _reject(future: asyncio.Future[Entry], error: JournalUnavailable) -> None:
    if not future.done():
        future.set_exception(error)
        # Waiters may have gone (a cancelled request, a release nobody awaits): mark the
        # error seen either way, so asyncio does not log it as never retrieved.
        future.exception()
