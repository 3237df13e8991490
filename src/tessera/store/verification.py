"""Verifiable work in the database: receipts, audits, audit cases, bans, violations, reputation.

``VerificationStore`` is the table access. ``ReceiptWriter`` is what the gateway holds for
receipts: one is made per served request, so they are stored in batches from a background
task (group commit) and never on the request's path. A receipt that is queued but not yet
written is still served from memory (:meth:`ReceiptWriter.pending`), so a consumer who asks
for it right after the response finds it.

The rows are frozen dataclasses checked on construction (SQLite would not enforce column
widths or the allowed values). Times are timezone-aware; money is integer base units.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import exc as sa_exc
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tessera.store.batch_writer import BatchWriter, Queued
from tessera.store.batched import in_transaction
from tessera.store.dialect import conflict_insert
from tessera.store.driver_statements import execute_many
from tessera.store.errors import StoreError, translated
from tessera.store.rows import row_values
from tessera.store.tables import (
    audit_cases,
    audits,
    provider_bans,
    provider_reputation,
    receipts,
    violations,
)

log = logging.getLogger(__name__)

AUDIT_OUTCOMES: Final = frozenset({"passed", "failed", "no_answer"})
CASE_STATUSES: Final = frozenset({"passed", "open", "upheld", "cleared", "inconclusive"})
AUDIT_ROUNDS: Final = range(1, 4)

# Column widths in tables.py, checked before writing: SQLite would not enforce them.
MAX_REQUEST_ID_CHARS = 100
MAX_PROVIDER_ID_CHARS = 64
MAX_MODEL_CHARS = 200
MAX_ACCOUNT_ID_CHARS = 40
MAX_KIND_CHARS = 50
SHA256_HEX_CHARS = 64

# Ids per ``IN (...)`` query: far below both drivers' bind-parameter limits.
_IN_CHUNK = 1_000
_INSERT_RECEIPT = insert(receipts)  # built once: the driver runs it compiled (driver_statements)

ReputationStats = dict[str, dict[str, float | int]]


class DuplicateReceipt(StoreError):
    """A receipt for one of these requests is already stored (or repeats within the batch);
    none of the batch was stored. The database's integrity error, named for what it means."""

    default_code = "duplicate_receipt"

    def __init__(self, request_ids: Iterable[str], *, within_batch: bool = False) -> None:
        self.request_ids = tuple(sorted(request_ids))
        where = "more than once in the batch" if within_batch else "already stored"
        shown = ", ".join(self.request_ids[:5]) + (" ..." if len(self.request_ids) > 5 else "")
        super().__init__(
            f"a receipt for request(s) {shown} is {where}; none of the batch was stored"
        )


def _text(owner: str, name: str, value: object, max_chars: int, *, exact: bool = False) -> None:
    if not isinstance(value, str) or not value or len(value) > max_chars:
        raise ValueError(f"{owner}: {name} must be a string of 1 to {max_chars} characters")
    if exact and len(value) != max_chars:
        raise ValueError(f"{owner}: {name} must be {max_chars} characters")


def _aware(owner: str, name: str, value: object) -> None:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValueError(f"{owner}: {name} must be a timezone-aware datetime")


@dataclass(frozen=True, slots=True)
class ReceiptRow:
    """One request's countersigned receipt; ``body_json`` is a CountersignedReceipt's JSON."""

    request_id: str
    job_id: str
    provider_id: str
    model: str
    weights_sha256: str
    account_id: str  # the paying consumer's account: only it may read the receipt
    body_json: str
    created_at: datetime

    def __post_init__(self) -> None:
        owner = f"receipt {self.request_id!r}"
        _text(owner, "request_id", self.request_id, MAX_REQUEST_ID_CHARS)
        _text(owner, "job_id", self.job_id, MAX_REQUEST_ID_CHARS)
        _text(owner, "provider_id", self.provider_id, MAX_PROVIDER_ID_CHARS)
        _text(owner, "model", self.model, MAX_MODEL_CHARS)
        _text(owner, "weights_sha256", self.weights_sha256, SHA256_HEX_CHARS, exact=True)
        _text(owner, "account_id", self.account_id, MAX_ACCOUNT_ID_CHARS)
        if not isinstance(self.body_json, str) or not self.body_json:
            raise ValueError(f"{owner}: body_json must be a non-empty string")
        _aware(owner, "created_at", self.created_at)


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One audit round of one request; ``evidence_json`` holds the verdict's findings and
    stats and the auditor's signed AuditResult. ``id`` is None until stored."""

    request_id: str
    round: int
    provider_id: str  # the provider audited
    auditor_id: str
    model: str
    outcome: str
    reason: str | None
    evidence_json: str
    created_at: datetime
    id: int | None = None

    def __post_init__(self) -> None:
        owner = f"audit of {self.request_id!r}"
        _text(owner, "request_id", self.request_id, MAX_REQUEST_ID_CHARS)
        if type(self.round) is not int or self.round not in AUDIT_ROUNDS:
            raise ValueError(f"{owner}: round must be 1, 2 or 3")
        _text(owner, "provider_id", self.provider_id, MAX_PROVIDER_ID_CHARS)
        _text(owner, "auditor_id", self.auditor_id, MAX_PROVIDER_ID_CHARS)
        _text(owner, "model", self.model, MAX_MODEL_CHARS)
        if self.outcome not in AUDIT_OUTCOMES:
            raise ValueError(f"{owner}: outcome must be one of {sorted(AUDIT_OUTCOMES)}")
        if not isinstance(self.evidence_json, str):
            raise ValueError(f"{owner}: evidence_json must be a string")
        _aware(owner, "created_at", self.created_at)


@dataclass(frozen=True, slots=True)
class CaseRow:
    """Where one audited request stands; the money moved is in base units."""

    request_id: str
    provider_id: str
    model: str
    status: str
    reason: str | None
    slashed_units: int
    refunded_units: int
    opened_at: datetime
    closed_at: datetime | None

    def __post_init__(self) -> None:
        owner = f"audit case {self.request_id!r}"
        _text(owner, "request_id", self.request_id, MAX_REQUEST_ID_CHARS)
        _text(owner, "provider_id", self.provider_id, MAX_PROVIDER_ID_CHARS)
        _text(owner, "model", self.model, MAX_MODEL_CHARS)
        if self.status not in CASE_STATUSES:
            raise ValueError(f"{owner}: status must be one of {sorted(CASE_STATUSES)}")
        for name in ("slashed_units", "refunded_units"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ValueError(f"{owner}: {name} must be a non-negative int of base units")
        _aware(owner, "opened_at", self.opened_at)
        if self.closed_at is not None:
            _aware(owner, "closed_at", self.closed_at)


@dataclass(frozen=True, slots=True)
class ViolationRow:
    """Something a provider did wrong, for its public record. ``id`` is None until stored."""

    provider_id: str
    request_id: str | None
    kind: str
    detail: str
    created_at: datetime
    id: int | None = None

    def __post_init__(self) -> None:
        owner = f"violation by {self.provider_id!r}"
        _text(owner, "provider_id", self.provider_id, MAX_PROVIDER_ID_CHARS)
        if self.request_id is not None:
            _text(owner, "request_id", self.request_id, MAX_REQUEST_ID_CHARS)
        _text(owner, "kind", self.kind, MAX_KIND_CHARS)
        if not isinstance(self.detail, str):
            raise ValueError(f"{owner}: detail must be a string")
        _aware(owner, "created_at", self.created_at)


def _positive(limit: int) -> None:
    if type(limit) is not int or limit < 1:
        raise ValueError("limit must be a positive int")


class VerificationStore:
    """Reads and writes the verification tables. Every database error leaves as StoreError."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def save_receipts(self, rows: Sequence[ReceiptRow]) -> None:
        """Insert all receipts in one transaction, or none of them.

        A request id already stored, or repeated in ``rows``, raises :class:`DuplicateReceipt`
        naming it: a request has exactly one receipt, so a second one is never merged.
        """
        if not rows:
            return
        ids = [row.request_id for row in rows]
        repeated = [request_id for request_id, seen in Counter(ids).items() if seen > 1]
        if repeated:
            raise DuplicateReceipt(repeated, within_batch=True)
        with translated(self._engine.url):
            try:
                values = [row_values(row) for row in rows]
                await in_transaction(
                    self._engine, lambda conn: execute_many(conn, _INSERT_RECEIPT, values)
                )
            except sa_exc.IntegrityError as exc:
                stored = await self._stored_receipt_ids(ids)
                if not stored:
                    raise  # not a duplicate after all: translated() says what it was
                raise DuplicateReceipt(stored) from exc

    async def _stored_receipt_ids(self, ids: Sequence[str]) -> list[str]:
        found: list[str] = []
        async with self._engine.connect() as conn:
            for start in range(0, len(ids), _IN_CHUNK):
                chunk = ids[start : start + _IN_CHUNK]
                stmt = select(receipts.c.request_id).where(receipts.c.request_id.in_(chunk))
                found.extend((await conn.execute(stmt)).scalars())
        return found

    async def receipt(self, request_id: str) -> ReceiptRow | None:
        stmt = select(receipts).where(receipts.c.request_id == request_id)
        with translated(self._engine.url):
            async with self._engine.connect() as conn:
                row = (await conn.execute(stmt)).mappings().first()
        return None if row is None else ReceiptRow(**row)

    async def save_audit(self, row: AuditRow) -> int:
        """Store one audit round; returns its id (the database assigns it, ``row.id`` is ignored)."""
        values = asdict(row)
        del values["id"]
        stmt = insert(audits).values(**values).returning(audits.c.id)
        with translated(self._engine.url):
            async with self._engine.begin() as conn:
                return int((await conn.execute(stmt)).scalar_one())

    async def audits(
        self,
        *,
        provider_id: str | None = None,
        request_id: str | None = None,
        limit: int = 50,
        before_id: int | None = None,
    ) -> list[AuditRow]:
        """Up to ``limit`` audits, newest first; pass the last id seen as ``before_id`` for
        the next page. With a provider or request, one range scan of its (…, id) index."""
        _positive(limit)
        stmt = select(audits).order_by(audits.c.id.desc()).limit(limit)
        if provider_id is not None:
            stmt = stmt.where(audits.c.provider_id == provider_id)
        if request_id is not None:
            stmt = stmt.where(audits.c.request_id == request_id)
        if before_id is not None:
            stmt = stmt.where(audits.c.id < before_id)
        with translated(self._engine.url):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(stmt)).mappings().all()
        return [AuditRow(**row) for row in rows]

    async def upsert_case(self, row: CaseRow) -> None:
        """Insert the case, or replace every field of the stored one (last writer wins)."""
        values = asdict(row)
        with translated(self._engine.url):
            async with self._engine.begin() as conn:
                stmt = conflict_insert(conn.dialect.name, audit_cases).values(**values)
                await conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=[audit_cases.c.request_id],
                        set_={name: stmt.excluded[name] for name in values if name != "request_id"},
                    )
                )

    async def case(self, request_id: str) -> CaseRow | None:
        stmt = select(audit_cases).where(audit_cases.c.request_id == request_id)
        with translated(self._engine.url):
            async with self._engine.connect() as conn:
                row = (await conn.execute(stmt)).mappings().first()
        return None if row is None else CaseRow(**row)

    async def cases(
        self, *, provider_id: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[CaseRow]:
        """Up to ``limit`` cases, most recently opened first, of one provider and/or status."""
        _positive(limit)
        stmt = (
            select(audit_cases)
            .order_by(audit_cases.c.opened_at.desc(), audit_cases.c.request_id.desc())
            .limit(limit)
        )
        if provider_id is not None:
            stmt = stmt.where(audit_cases.c.provider_id == provider_id)
        if status is not None:
            stmt = stmt.where(audit_cases.c.status == status)
        with translated(self._engine.url):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(stmt)).mappings().all()
        return [CaseRow(**row) for row in rows]

    async def ban(self, provider_id: str, model: str, reason: str, at: datetime) -> bool:
        """Ban ``provider_id`` from serving ``model``. False (and the first ban's reason and
        time kept) if it was banned already, so replaying a verdict bans once."""
        _text("ban", "provider_id", provider_id, MAX_PROVIDER_ID_CHARS)
        _text("ban", "model", model, MAX_MODEL_CHARS)
        _aware("ban", "at", at)
        with translated(self._engine.url):
            async with self._engine.begin() as conn:
                stmt = (
                    conflict_insert(conn.dialect.name, provider_bans)
                    .values(provider_id=provider_id, model=model, reason=reason, created_at=at)
                    .on_conflict_do_nothing(
                        index_elements=[provider_bans.c.provider_id, provider_bans.c.model]
                    )
                    .returning(provider_bans.c.provider_id)
                )
                return (await conn.execute(stmt)).first() is not None

    async def bans(self, provider_id: str | None = None) -> list[tuple[str, str, str, datetime]]:
        """Every ban as (provider_id, model, reason, banned_at), by provider then model."""
        stmt = select(
            provider_bans.c.provider_id,
            provider_bans.c.model,
            provider_bans.c.reason,
            provider_bans.c.created_at,
        ).order_by(provider_bans.c.provider_id, provider_bans.c.model)
        if provider_id is not None:
            stmt = stmt.where(provider_bans.c.provider_id == provider_id)
        with translated(self._engine.url):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(stmt)).all()
        return [(row[0], row[1], row[2], row[3]) for row in rows]

    async def add_violation(self, row: ViolationRow) -> int:
        """Store one violation; returns its id (``row.id`` is ignored)."""
        values = asdict(row)
        del values["id"]
        stmt = insert(violations).values(**values).returning(violations.c.id)
        with translated(self._engine.url):
            async with self._engine.begin() as conn:
                return int((await conn.execute(stmt)).scalar_one())

    async def violations(self, provider_id: str, limit: int = 50) -> list[ViolationRow]:
        """The provider's newest ``limit`` violations, newest first."""
        _positive(limit)
        stmt = (
            select(violations)
            .where(violations.c.provider_id == provider_id)
            .order_by(violations.c.id.desc())
            .limit(limit)
        )
        with translated(self._engine.url):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(stmt)).mappings().all()
        return [ViolationRow(**row) for row in rows]

    async def save_reputation(self, stats: ReputationStats, at: datetime) -> None:
        """Insert or replace the counters of every provider in ``stats``, in one transaction.

        Counters are ints or finite floats; each comes back from :meth:`load_reputation`
        with its type and value unchanged. Providers not in ``stats`` keep their row.
        """
        _aware("reputation", "at", at)
        rows = [
            {"provider_id": provider_id, "stats_json": _stats_json(provider_id, counters)}
            for provider_id, counters in sorted(stats.items())  # one lock order on PostgreSQL
        ]
        if not rows:
            return
        with translated(self._engine.url):
            async with self._engine.begin() as conn:
                stmt = conflict_insert(conn.dialect.name, provider_reputation)
                stmt = stmt.on_conflict_do_update(
                    index_elements=[provider_reputation.c.provider_id],
                    set_={
                        "stats_json": stmt.excluded.stats_json,
                        "updated_at": stmt.excluded.updated_at,
                    },
                )
                await conn.execute(stmt, [{**row, "updated_at": at} for row in rows])

    async def load_reputation(self) -> ReputationStats:
        """Every provider's stored counters, as :meth:`save_reputation` was given them."""
        stmt = select(provider_reputation.c.provider_id, provider_reputation.c.stats_json)
        with translated(self._engine.url):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(stmt)).all()
        return {provider_id: _parse_stats(provider_id, text) for provider_id, text in rows}


def _number(value: object) -> bool:
    if type(value) is int:
        return True
    return type(value) is float and math.isfinite(value)


def _stats_json(provider_id: str, counters: dict[str, float | int]) -> str:
    _text("reputation", "provider_id", provider_id, MAX_PROVIDER_ID_CHARS)
    if not isinstance(counters, dict) or not all(
        isinstance(name, str) and _number(value) for name, value in counters.items()
    ):
        raise ValueError(
            f"reputation of {provider_id!r}: counters must map names to ints or finite floats"
        )
    return json.dumps(counters, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _parse_stats(provider_id: str, text: str) -> dict[str, float | int]:
    try:
        parsed: Any = json.loads(text)
    except ValueError as exc:
        raise StoreError(f"stored reputation of {provider_id} is not JSON ({exc})") from exc
    if not isinstance(parsed, dict) or not all(_number(value) for value in parsed.values()):
        raise StoreError(f"stored reputation of {provider_id} is not an object of numbers")
    return parsed


class ReceiptWriter(BatchWriter[ReceiptRow]):
    """Stores receipts from a background task, in batches (group commit).

    The contract is :class:`BatchWriter`'s. Besides, a receipt is readable through
    :meth:`pending` from ``submit`` until it is stored (or dropped). A receipt already
    stored with the same content counts as written (a batch retried after an unclear
    commit); one stored with other content is dropped with a warning, never overwritten.
    """

    what = "receipt"

    def __init__(
        self,
        store: VerificationStore,
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
        self._store = store
        # Queued and in-flight receipts by request id, for reads before they are stored.
        self._unwritten: dict[str, ReceiptRow] = {}

    def pending(self, request_id: str) -> ReceiptRow | None:
        """The receipt for ``request_id`` if it is submitted but not yet stored."""
        return self._unwritten.get(request_id)

    def _admit(self, row: ReceiptRow) -> bool:
        queued = self._unwritten.get(row.request_id)
        if queued is not None:
            if queued != row:
                self._count_drop(1, f"a different receipt for {row.request_id} is queued")
            return False
        self._unwritten[row.request_id] = row
        return True

    def _forget(self, rows: Sequence[ReceiptRow]) -> None:
        for row in rows:
            if self._unwritten.get(row.request_id) is row:
                del self._unwritten[row.request_id]

    async def _write(self, batch: Sequence[ReceiptRow]) -> None:
        await self._store.save_receipts(list(batch))

    async def _settle(self, batch: list[Queued[ReceiptRow]], exc: StoreError) -> bool:
        """Receipts already stored: the same ones count as written, other ones are dropped,
        and the rest of the batch goes back in the queue."""
        if not isinstance(exc, DuplicateReceipt):
            return False
        stored_ids = set(exc.request_ids)
        same: list[Queued[ReceiptRow]] = []
        conflicting: list[Queued[ReceiptRow]] = []
        for queued in batch:
            if queued.item.request_id in stored_ids:
                stored = await self._store.receipt(queued.item.request_id)
                (same if stored == queued.item else conflicting).append(queued)
        for queued in conflicting:
            log.warning(
                "receipt for request %s not stored: a different one is stored already",
                queued.item.request_id,
            )
        self._resolve(same)
        self._resolve(conflicting, dropped="a different receipt is stored")
        self._requeue([q for q in batch if q.item.request_id not in stored_ids])
        return True
