"""The request log: one row per API request, written in batches off the hot path.

``RequestLog`` is the table access; ``RequestLogWriter`` is what the gateway holds. Its
``submit`` only appends to an in-memory queue, so a slow or absent database never adds
latency to a request; a background task writes batches. The queue is bounded: when it
is full the oldest record is dropped and counted, because losing history is better
than growing memory until the process dies.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Final

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from tessera.store.batch_writer import BatchWriter
from tessera.store.dialect import conflict_insert
from tessera.store.errors import translated
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

    @property
    def pending(self) -> int:
        """Records submitted and not yet written or dropped."""
        return self.backlog

    async def _write(self, batch: Sequence[RequestRecord]) -> None:
        await self._log.write_many(list(batch))
