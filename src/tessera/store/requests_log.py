"""The request log: one row per API request, written in batches off the hot path.

``RequestLog`` is the table access; ``RequestLogWriter`` is what the gateway holds. Its
``submit`` only appends to an in-memory queue, so a slow or absent database never adds
latency to a request; a background task writes batches. The queue is bounded: when it
is full the oldest record is dropped and counted, because losing history is better
than growing memory until the process dies.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Final

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from tessera.store.dialect import conflict_insert
from tessera.store.errors import StoreError, translated
from tessera.store.tables import requests

log = logging.getLogger(__name__)

ENDPOINTS: Final = frozenset({"chat.completions", "completions", "embeddings"})
STATUSES: Final = frozenset({"ok", "error", "cancelled"})


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One finished request. Validated on construction: the log never holds nonsense."""

    request_id: str
    api_key_id: str
    endpoint: str
    model: str
    provider_id: str | None
    status: str
    error_code: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_ms: int
    ttft_ms: int | None
    created_at: datetime
    account_id: str | None = None  # the paying account; None for requests before billing
    cost: int = 0  # base units charged
    price_input_per_mtok: int | None = None  # the price paid, base units per million tokens
    price_output_per_mtok: int | None = None

    def __post_init__(self) -> None:
        if self.endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint {self.endpoint!r} is not one of {sorted(ENDPOINTS)}")
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {sorted(STATUSES)}")
        counts = (self.prompt_tokens, self.completion_tokens, self.latency_ms, self.ttft_ms or 0)
        if any(value < 0 for value in counts):
            raise ValueError(f"negative count in request {self.request_id}")
        if self.created_at.tzinfo is None:
            raise ValueError(f"created_at of request {self.request_id} has no timezone")
        prices = (self.price_input_per_mtok, self.price_output_per_mtok)
        if not _base_units(self.cost) or not all(p is None or _base_units(p) for p in prices):
            raise ValueError(
                f"cost and prices of request {self.request_id} must be non-negative ints "
                f"of base units"
            )


def _base_units(value: object) -> bool:
    return type(value) is int and value >= 0


class RequestLog:
    """Reads and writes the ``requests`` table."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def write_many(self, records: Sequence[RequestRecord]) -> None:
        """Insert all records in one transaction. A request_id already stored is skipped,
        so a batch retried after an unclear failure never duplicates or fails."""
        if not records:
            return
        with translated(self._engine.url):
            async with self._engine.begin() as conn:
                stmt = conflict_insert(conn.dialect.name, requests).on_conflict_do_nothing(
                    index_elements=[requests.c.request_id]
                )
                await conn.execute(stmt, [asdict(record) for record in records])

    async def get(self, request_id: str) -> RequestRecord | None:
        stmt = select(requests).where(requests.c.request_id == request_id)
        with translated(self._engine.url):
            async with self._engine.connect() as conn:
                row = (await conn.execute(stmt)).mappings().first()
        return None if row is None else RequestRecord(**row)

    async def for_account(
        self, account_id: str, limit: int, before: datetime | None = None
    ) -> builtins.list[RequestRecord]:
        """Up to ``limit`` of the account's requests, newest first, created before ``before``
        (aware) if given: one range scan of the (account_id, created_at) index."""
        if type(limit) is not int or limit < 1:
            raise ValueError("limit must be a positive int")
        stmt = (
            select(requests)
            .where(requests.c.account_id == account_id)
            .order_by(requests.c.created_at.desc(), requests.c.request_id.desc())
            .limit(limit)
        )
        if before is not None:
            stmt = stmt.where(requests.c.created_at < before)
        with translated(self._engine.url):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(stmt)).mappings().all()
        return [RequestRecord(**row) for row in rows]


class RequestLogWriter:
    """Batches records into ``RequestLog.write_many`` from a background task.

    Contract: ``submit`` never blocks and never raises for a full queue or a closed
    writer (it drops and counts). Call it from the event loop's thread. After ``close``
    returns, every submitted record is either written or counted in ``dropped``.
    Transient database errors are retried with capped backoff while the writer runs.
    """

    def __init__(
        self,
        log: RequestLog,
        *,
        max_pending: int = 10_000,
        batch_size: int = 500,
        flush_interval_s: float = 0.25,
        max_backoff_s: float = 5.0,
    ) -> None:
        if max_pending < 1 or batch_size < 1 or flush_interval_s <= 0:
            raise ValueError("max_pending, batch_size and flush_interval_s must be positive")
        self._log = log
        self._max_pending = max_pending
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._max_backoff_s = max_backoff_s
        self._queue: deque[RequestRecord] = deque()
        self._wake = asyncio.Event()
        self._closed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._failures = 0
        self.dropped = 0
        self.written = 0

    @property
    def pending(self) -> int:
        return len(self._queue)

    def submit(self, record: RequestRecord) -> None:
        """Queue ``record`` for writing; O(1), no I/O."""
        if self._closing:
            self._drop(1, "submitted after close")
            return
        self._queue.append(record)
        self._trim()
        if len(self._queue) >= self._batch_size:
            self._wake.set()

    async def start(self) -> None:
        if self._task is None and not self._closing:
            self._task = asyncio.create_task(self._run(), name="request-log-writer")

    async def close(self) -> None:
        """Stop accepting records and flush everything pending (one attempt per batch)."""
        self._closing = True
        self._wake.set()
        self._closed.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="request-log-writer")
        await self._task

    async def _run(self) -> None:
        while self._queue or not self._closing:
            if len(self._queue) < self._batch_size and not self._closing:
                await self._sleep(self._flush_interval_s)
                if not self._queue:
                    continue
            batch = [self._queue.popleft() for _ in range(min(self._batch_size, len(self._queue)))]
            try:
                await self._log.write_many(batch)
            except StoreError as exc:
                self._failures += 1
                if exc.retryable and not self._closing:
                    self._queue.extendleft(reversed(batch))
                    self._trim()
                    log.warning("request log write failed (%s); will retry", exc.message)
                    await self._back_off(
                        min(
                            self._max_backoff_s,
                            self._flush_interval_s * 2 ** min(self._failures, 16),
                        )
                    )
                    continue
                self._drop(len(batch), f"write failed: {exc.message}")
                if self._closing:  # One failed attempt at close: give up on the rest.
                    self._drop(len(self._queue), "database unavailable at close")
                    self._queue.clear()
            except Exception:  # A bug must not kill the writer and pile up records.
                log.exception("request log writer failed on a batch of %d", len(batch))
                self._drop(len(batch), "unexpected error")
            else:
                self._failures = 0
                self.written += len(batch)

    async def _sleep(self, seconds: float) -> None:
        """Wait up to ``seconds`` for more records; a full batch or ``close`` wakes it early."""
        self._wake.clear()
        if self._closing or len(self._queue) >= self._batch_size:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _back_off(self, seconds: float) -> None:
        """Wait ``seconds`` before retrying; only ``close`` cuts it short."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closed.wait(), seconds)

    def _trim(self) -> None:
        overflow = len(self._queue) - self._max_pending
        for _ in range(overflow):
            self._queue.popleft()
        if overflow > 0:
            self._drop(overflow, "queue full, dropped the oldest")

    def _drop(self, count: int, why: str) -> None:
        if count <= 0:
            return
        before = self.dropped
        self.dropped += count
        # Log the first drop and then once per thousand, not once per record.
        if before == 0 or before // 1000 != self.dropped // 1000:
            log.warning(
                "request log dropped %d record(s) (%s); %d in total", count, why, self.dropped
            )
