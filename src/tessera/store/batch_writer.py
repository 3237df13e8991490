"""Group commit from a background task: what the request log and the receipt store share.

Contract: ``submit`` never blocks, never does I/O and never raises for a full queue or a
closed writer (it drops and counts). Call it from the event loop's thread. Items are
written in batches of up to ``batch_size``, when a batch fills, every ``flush_interval_s``,
on ``flush`` or on ``close``. Retryable database errors are retried with capped backoff
while the writer runs; ``close`` makes one last attempt per batch. After ``close`` returns,
every item submitted was either written or counted in ``dropped``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from tessera.store.errors import StoreError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Queued(Generic[T]):
    """One submitted item and its place in submission order."""

    seq: int
    item: T


class BatchWriter(Generic[T]):
    """Subclasses say how a batch is written (``_write``) and may refuse items
    (``_admit``), settle a failed batch themselves (``_settle``) or track what is still
    unwritten (``_forget``)."""

    what = "item"  # in log lines: "dropped 3 item(s)"

    def __init__(
        self,
        *,
        max_pending: int = 10_000,
        batch_size: int = 500,
        flush_interval_s: float = 0.25,
        max_backoff_s: float = 5.0,
    ) -> None:
        if max_pending < 1 or batch_size < 1 or flush_interval_s <= 0 or max_backoff_s <= 0:
            raise ValueError(
                "max_pending, batch_size, flush_interval_s and max_backoff_s must be positive"
            )
        self._max_pending = max_pending
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._max_backoff_s = max_backoff_s
        self._queue: deque[Queued[T]] = deque()
        self._outstanding: dict[int, T] = {}  # by seq, oldest first: queued or in flight
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._closed = asyncio.Event()
        self._progress = asyncio.Event()  # replaced each time items are resolved
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._flushers = 0
        self._failures = 0
        self.written = 0
        self.dropped = 0
        self.batches = 0

    # ------------------------------------------------------------ hooks

    async def _write(self, batch: Sequence[T]) -> None:
        """Store ``batch`` in one transaction; StoreError when it could not."""
        raise NotImplementedError

    def _admit(self, item: T) -> bool:
        """Whether to queue ``item`` (False: the subclass dealt with it)."""
        return True

    async def _settle(self, batch: list[Queued[T]], exc: StoreError) -> bool:
        """Handle a failed batch itself (True), or leave it to retry and drop (False)."""
        return False

    def _forget(self, items: Sequence[T]) -> None:
        """``items`` are no longer unwritten (stored or dropped)."""

    # ------------------------------------------------------------ public

    @property
    def backlog(self) -> int:
        """Items submitted and not yet stored or dropped."""
        return len(self._outstanding)

    def submit(self, item: T) -> None:
        """Queue ``item``; O(1), no I/O."""
        if self._closing:
            self._count_drop(1, "submitted after close")
            return
        if not self._admit(item):
            return
        queued = Queued(next(self._seq), item)
        self._queue.append(queued)
        self._outstanding[queued.seq] = item
        self._trim()
        if len(self._queue) >= self._batch_size:
            self._wake.set()

    async def start(self) -> None:
        if self._task is None and not self._closing:
            self._task = asyncio.create_task(self._run(), name=f"{self.what}-writer")

    async def flush(self) -> None:
        """Wait until every item submitted before this call is stored or dropped.

        Starts the writer if it was not. While the database is unreachable this keeps
        waiting (the writer retries); bound it with ``asyncio.timeout`` where that matters.
        """
        if not self._outstanding:
            return
        last = next(reversed(self._outstanding))
        await self.start()
        self._flushers += 1
        self._wake.set()
        try:
            while self._outstanding and next(iter(self._outstanding)) <= last:
                if self._task is None or self._task.done():
                    return  # closed while waiting: close() resolved every item
                await self._progress.wait()
        finally:
            self._flushers -= 1

    async def close(self) -> None:
        """Stop accepting items and store everything pending (one attempt per batch)."""
        self._closing = True
        self._wake.set()
        self._closed.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"{self.what}-writer")
        await self._task

    # ------------------------------------------------------------ the loop

    async def _run(self) -> None:
        while self._queue or not self._closing:
            if not self._due():
                await self._sleep(self._flush_interval_s)
                if not self._queue:
                    continue
            await self._write_batch()

    def _due(self) -> bool:
        """A batch should go now: it is full, or someone waits for it."""
        full = len(self._queue) >= self._batch_size
        return bool(self._queue) and (full or self._closing or self._flushers > 0)

    async def _write_batch(self) -> None:
        size = min(self._batch_size, len(self._queue))
        batch = [self._queue.popleft() for _ in range(size)]
        try:
            await self._write([q.item for q in batch])
        except StoreError as exc:
            try:
                settled = await self._settle(batch, exc)
            except StoreError as again:
                await self._failed(batch, again)
                return
            except Exception:  # A bug must not kill the writer and pile up items.
                log.exception("%s writer failed settling a batch of %d", self.what, size)
                self._resolve(batch, dropped="unexpected error")
                return
            if not settled:
                await self._failed(batch, exc)
        except Exception:  # A bug must not kill the writer and pile up items.
            log.exception("%s writer failed on a batch of %d", self.what, size)
            self._resolve(batch, dropped="unexpected error")
        else:
            self._failures = 0
            self.batches += 1
            self._resolve(batch)

    async def _failed(self, batch: list[Queued[T]], exc: StoreError) -> None:
        self._failures += 1
        if exc.retryable and not self._closing:
            self._requeue(batch)
            self._trim()
            log.warning("%s write failed (%s); will retry", self.what, exc.message)
            await self._back_off(
                min(self._max_backoff_s, self._flush_interval_s * 2 ** min(self._failures, 16))
            )
            return
        self._resolve(batch, dropped=f"write failed: {exc.message}")
        if self._closing:  # One failed attempt at close: give up on the rest.
            rest = list(self._queue)
            self._queue.clear()
            self._resolve(rest, dropped="database unavailable at close")

    def _requeue(self, batch: Sequence[Queued[T]]) -> None:
        """Put ``batch`` back at the front, in order, for the next attempt."""
        self._queue.extendleft(reversed(batch))

    def _resolve(self, batch: Sequence[Queued[T]], *, dropped: str | None = None) -> None:
        """``batch`` is stored (or, with ``dropped``, given up on): no longer outstanding."""
        if not batch:
            return
        for queued in batch:
            self._outstanding.pop(queued.seq, None)
        self._forget([q.item for q in batch])
        if dropped is None:
            self.written += len(batch)
        else:
            self._count_drop(len(batch), dropped)
        self._progress.set()
        self._progress = asyncio.Event()

    async def _sleep(self, seconds: float) -> None:
        """Wait up to ``seconds`` for more; a full batch, a flush or close wakes it early."""
        self._wake.clear()
        if self._due():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _back_off(self, seconds: float) -> None:
        """Wait ``seconds`` before retrying; only ``close`` cuts it short."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closed.wait(), seconds)

    def _trim(self) -> None:
        overflow = len(self._queue) - self._max_pending
        if overflow > 0:
            oldest = [self._queue.popleft() for _ in range(overflow)]
            self._resolve(oldest, dropped="queue full, dropped the oldest")

    def _count_drop(self, count: int, why: str) -> None:
        before = self.dropped
        self.dropped += count
        # Log the first drop and then once per thousand, not once per item.
        if before == 0 or before // 1000 != self.dropped // 1000:
            log.warning(
                "%s writer dropped %d %s(s) (%s); %d in total",
                self.what,
                count,
                self.what,
                why,
                self.dropped,
            )
