"""The request log: one row per API request, written in batches off the hot path.

``RequestLog`` is the table access; ``RequestLogWriter`` is what the gateway holds. Its
``submit`` only appends to an in-memory queue, so a slow or absent database never adds
latency to a request; a background task writes batches. The queue is bounded: when it
is full the oldest record is dropped and counted, because losing history is better
than growing memory until the process dies.

A request is logged twice through the same queue: an ``in_flight`` row when it starts and
its final row when it ends, which replaces the first (never the other way round). A
gateway that crashed leaves ``in_flight`` rows behind; the next start marks them
``interrupted`` (``mark_interrupted``), so every request that began leaves a row.
Replicas share one log: a replica's start also marks the requests other replicas are
running, and their final records, when they come, replace those marks.
"""

from __future__ import annotations

import builtins
import functools
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Final

from sqlalchemy import or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.dml import Insert

from tessera.store.batch_writer import BatchWriter
from tessera.store.batched import in_transaction
from tessera.store.dialect import conflict_insert
from tessera.store.driver_statements import execute_many
from tessera.store.errors import StoreError, translated
from tessera.store.rows import row_values
from tessera.store.tables import requests

log = logging.getLogger(__name__)

ENDPOINTS: Final = frozenset({"chat.completions", "completions", "embeddings"})
IN_FLIGHT: Final = "in_flight"
INTERRUPTED: Final = "interrupted"
GATEWAY_RESTARTED: Final = "gateway_restarted"
REPLICA_GONE: Final = "replica_gone"  # its replica died: no start of its own will mark it
STATUSES: Final = frozenset({"ok", "error", "cancelled", IN_FLIGHT, INTERRUPTED})
NOT_RECORDED: Final = "not_recorded"  # ended with no final record: the code says so
MAX_MODEL_CHARS: Final = 200  # the column's width


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request, finished or (``in_flight``) started. Validated on construction: the log
    never holds nonsense."""

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


def in_flight_record(
    request_id: str, api_key_id: str, endpoint: str, model: str, account_id: str | None
) -> RequestRecord:
    """The row of a request that has just started (its final record replaces it)."""
    return RequestRecord(
        request_id=request_id,
        api_key_id=api_key_id,
        endpoint=endpoint,
        model=model[:MAX_MODEL_CHARS],
        provider_id=None,
        status=IN_FLIGHT,
        error_code=None,
        prompt_tokens=0,
        completion_tokens=0,
        latency_ms=0,
        ttft_ms=None,
        created_at=datetime.now(UTC),
        account_id=account_id,
    )


def _base_units(value: object) -> bool:
    return type(value) is int and value >= 0


class RequestLog:
    """Reads and writes the ``requests`` table."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def write_many(self, records: Sequence[RequestRecord]) -> None:
        """Insert all records in one transaction. A stored row is replaced only while it is
        ``in_flight`` or ``interrupted`` (its final record arrived), so a batch retried
        after an unclear failure never duplicates, fails or rewrites a finished request."""
        if not records:
            return
        latest = {record.request_id: record for record in records}  # the final one wins
        rows = [row_values(record) for record in latest.values()]

        def write(conn: Connection) -> None:
            execute_many(conn, _final_records_upsert(conn.dialect.name), rows)

        with translated(self._engine.url):
            await in_transaction(self._engine, write)

    async def mark_interrupted(self) -> int:
        """Mark the rows of requests a crashed gateway left ``in_flight`` as
        ``interrupted`` (error ``gateway_restarted``); how many. Run once at start, before
        any request: one range scan of the partial status index."""
        stmt = (
            update(requests)
            .where(requests.c.status == IN_FLIGHT)
            .values(status=INTERRUPTED, error_code=GATEWAY_RESTARTED)
        )
        with translated(self._engine.url):
            async with self._engine.begin() as conn:
                return (await conn.execute(stmt)).rowcount

    async def mark_interrupted_unless(
        self, running: Collection[str], before: datetime, chunk: int = 500
    ) -> int:
        """Mark ``interrupted`` the rows left ``in_flight`` since before ``before`` whose
        request no live replica is running (``running``: every live replica's ids); how
        many. For a replica that died and will not start again to mark its own."""
        find = select(requests.c.request_id).where(
            requests.c.status == IN_FLIGHT, requests.c.created_at < before
        )
        with translated(self._engine.url):
            async with self._engine.connect() as conn:
                found = [row[0] for row in await conn.execute(find)]
            left = [rid for rid in found if rid not in running]
            marked = 0
            for start in range(0, len(left), chunk):
                stmt = (
                    update(requests)
                    .where(
                        requests.c.request_id.in_(left[start : start + chunk]),
                        requests.c.status == IN_FLIGHT,
                    )
                    .values(status=INTERRUPTED, error_code=REPLICA_GONE)
                )
                async with self._engine.begin() as conn:
                    marked += (await conn.execute(stmt)).rowcount
        return marked

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


class RequestLogWriter(BatchWriter[RequestRecord]):
    """Batches records into ``RequestLog.write_many`` from a background task.

    The contract is :class:`BatchWriter`'s: ``submit`` never blocks or raises; after
    ``close`` every record is written or counted in ``dropped``.
    """

    what = "request log"

    def __init__(
        self,
        log: RequestLog,
        *,
        max_pending: int = 10_000,
        batch_size: int = 500,
        flush_interval_s: float = 0.25,
        max_backoff_s: float = 5.0,
    ) -> None:
        super().__init__(
            max_pending=max_pending,
            batch_size=batch_size,
            flush_interval_s=flush_interval_s,
            max_backoff_s=max_backoff_s,
        )
        self._log = log
        self._running: dict[str, RequestRecord] = {}  # started, no final record yet
        self._marked = False

    async def _run(self) -> None:
        """Mark the rows a crashed predecessor left in flight, then write batches: in the
        writer's own task, so ``start`` never waits and nothing of ours is marked."""
        if not self._marked:
            self._marked = True
            try:
                if count := await self._log.mark_interrupted():
                    log.warning("%d request(s) were in flight at the last stop", count)
            except StoreError as exc:
                log.warning("could not mark the requests left in flight: %s", exc.message)
        await super()._run()

    def started(self, record: RequestRecord) -> Callable[[], None]:
        """Log ``record`` (an ``in_flight`` row) now, off the hot path like every record.

        Returns ``unrecorded``: call it when the request ended early (an error, the client
        left); if no final record was submitted by then, one is, status ``error`` and
        code ``not_recorded``, so no row stays in flight. Answers that were served record
        themselves once delivered.
        """
        self._running[record.request_id] = record
        if len(self._running) > self._max_pending:  # a caller that never ends: bounded
            del self._running[next(iter(self._running))]
        self.submit(record)
        return functools.partial(self._ended, record.request_id)

    def _ended(self, request_id: str) -> None:
        record = self._running.pop(request_id, None)
        if record is not None:
            latency_ms = (datetime.now(UTC) - record.created_at) // timedelta(milliseconds=1)
            self.submit(
                replace(
                    record,
                    status="error",
                    error_code=NOT_RECORDED,
                    latency_ms=max(0, latency_ms),
                    created_at=datetime.now(UTC),
                )
            )

    def submit(self, item: RequestRecord) -> None:
        if item.status != IN_FLIGHT:
            self._running.pop(item.request_id, None)
        super().submit(item)

    def running(self) -> set[str]:
        """The requests started here whose final record has not been submitted."""
        return set(self._running)

    @property
    def pending(self) -> int:
        """Records submitted and not yet written or dropped."""
        return self.backlog

    async def _write(self, batch: Sequence[RequestRecord]) -> None:
        await self._log.write_many(list(batch))


@functools.cache
def _final_records_upsert(dialect: str) -> Insert:
    """Insert, or replace a row that is ``in_flight`` or ``interrupted`` (its final record
    arrived). Built once per dialect: the driver runs it compiled (driver_statements)."""
    stmt = conflict_insert(dialect, requests)
    return stmt.on_conflict_do_update(
        index_elements=[requests.c.request_id],
        set_={
            column.name: stmt.excluded[column.name]
            for column in requests.columns
            if column.name != "request_id"
        },
        # ``interrupted``: another replica's start marked it while it was running
        # here (replicas share the log); its own final record is the truth.
        # (Two comparisons, not IN: an expanding IN cannot run per row of a batch.)
        where=or_(requests.c.status == IN_FLIGHT, requests.c.status == INTERRUPTED),
    )
