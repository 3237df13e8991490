"""VerificationStore and ReceiptWriter on a real database, and migration 0003 down and up."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from nacl.signing import SigningKey
from sqlalchemy import Connection, func, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tessera.ledger.accounts import TOKEN
from tessera.ledger.journal import Ledger
from tessera.ledger.transfers import mint
from tessera.protocol import signing
from tessera.protocol.receipts import (
    CountersignedReceipt,
    countersign,
    sign_receipt,
    verify_countersigned,
)
from tessera.protocol.wire import Receipt
from tessera.store.engine import SQLITE_BEGIN_OPTION, create_engine
from tessera.store.errors import StoreError, translated
from tessera.store.ledger import LedgerStore
from tessera.store.migrate import alembic_config, current_revision, head_revision
from tessera.store.tables import metadata, receipts
from tessera.store.verification import (
    AuditRow,
    CaseRow,
    DuplicateReceipt,
    ReceiptRow,
    ReceiptWriter,
    VerificationStore,
    ViolationRow,
)

pytestmark = pytest.mark.integration

T0 = datetime(2025, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
PROVIDER_KEY = SigningKey(bytes(range(32)))
GATEWAY_KEY = SigningKey(bytes(range(1, 33)))
PROVIDER = signing.public_key_hex(PROVIDER_KEY)
OTHER = "cd" * 32
AUDITOR = "ef" * 32
ACCOUNT = "acct_0123456789abcdef"
WEIGHTS = "a1" * 32
VERIFICATION_TABLES = {
    "receipts",
    "audits",
    "audit_cases",
    "provider_bans",
    "violations",
    "provider_reputation",
}


def receipt_row(
    index: int, *, provider_key: SigningKey = PROVIDER_KEY, **changes: object
) -> ReceiptRow:
    """A row whose body is a really signed and countersigned receipt."""
    request_id = f"req_{index:06d}"
    receipt = Receipt(
        request_id=request_id,
        job_id=f"{request_id}.1",
        provider_id=signing.public_key_hex(provider_key),
        model="tessera-tiny",
        weights_sha256=WEIGHTS,
        kind="chat",
        prompt_sha256="b2" * 32,
        output_sha256="c3" * 32,
        prompt_tokens=10 + index,
        completion_tokens=20,
        price_input_per_mtok=150_000_000,
        price_output_per_mtok=600_000_000,
        started_at_ms=1_741_000_000_000 + index,
        finished_at_ms=1_741_000_000_500 + index,
    )
    signed = countersign(
        GATEWAY_KEY, "gw-test", receipt, sign_receipt(provider_key, receipt), 1_741_000_001_000
    )
    fields: dict[str, object] = {
        "request_id": request_id,
        "job_id": receipt.job_id,
        "provider_id": receipt.provider_id,
        "model": receipt.model,
        "weights_sha256": WEIGHTS,
        "account_id": ACCOUNT,
        "body_json": signed.model_dump_json(),
        "created_at": T0 + timedelta(milliseconds=index),
    }
    fields.update(changes)
    return ReceiptRow(**fields)  # type: ignore[arg-type]


def audit_row(request: int, round_: int, provider: str = PROVIDER, **changes: object) -> AuditRow:
    fields: dict[str, object] = {
        "request_id": f"req_{request:06d}",
        "round": round_,
        "provider_id": provider,
        "auditor_id": AUDITOR,
        "model": "tessera-tiny",
        "outcome": "passed",
        "reason": None,
        "evidence_json": '{"findings":[],"stats":{"max_rank":1}}',
        "created_at": T0 + timedelta(seconds=request, milliseconds=round_),
    }
    fields.update(changes)
    return AuditRow(**fields)  # type: ignore[arg-type]


def case_row(request: int, provider: str = PROVIDER, **changes: object) -> CaseRow:
    fields: dict[str, object] = {
        "request_id": f"req_{request:06d}",
        "provider_id": provider,
        "model": "tessera-tiny",
        "status": "open",
        "reason": None,
        "slashed_units": 0,
        "refunded_units": 0,
        "opened_at": T0 + timedelta(seconds=request),
        "closed_at": None,
    }
    fields.update(changes)
    return CaseRow(**fields)  # type: ignore[arg-type]


def violation_row(index: int, provider: str = PROVIDER, **changes: object) -> ViolationRow:
    fields: dict[str, object] = {
        "provider_id": provider,
        "request_id": f"req_{index:06d}",
        "kind": "audit_failed",
        "detail": f"token {index} ranked 900th",
        "created_at": T0 + timedelta(seconds=index),
    }
    fields.update(changes)
    return ViolationRow(**fields)  # type: ignore[arg-type]


async def count_receipts(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(receipts))).scalar_one())


# ---------------------------------------------------------------- receipts


async def test_receipts_round_trip_and_still_verify(store_engine: AsyncEngine) -> None:
    store = VerificationStore(store_engine)
    rows = [receipt_row(index) for index in range(3)]
    await store.save_receipts(rows)
    for row in rows:
        stored = await store.receipt(row.request_id)
        assert stored == row
        assert stored is not None and stored.created_at.tzinfo is not None
        body = CountersignedReceipt.model_validate_json(stored.body_json)
        verify_countersigned(body, signing.public_key_hex(GATEWAY_KEY))
        assert body.receipt.request_id == row.request_id
    assert await store.receipt("req_missing") is None
    await store.save_receipts([])
    assert await count_receipts(store_engine) == 3


async def test_duplicate_receipt_refuses_the_whole_batch(store_engine: AsyncEngine) -> None:
    store = VerificationStore(store_engine)
    await store.save_receipts([receipt_row(1), receipt_row(2)])
    other = SigningKey(bytes(range(2, 34)))
    with pytest.raises(DuplicateReceipt) as refused:
        await store.save_receipts([receipt_row(3), receipt_row(2, provider_key=other)])
    assert isinstance(refused.value, StoreError)
    assert refused.value.request_ids == ("req_000002",)
    assert not refused.value.retryable
    assert await store.receipt("req_000003") is None
    assert await store.receipt("req_000002") == receipt_row(2)

    with pytest.raises(DuplicateReceipt) as repeated:
        await store.save_receipts([receipt_row(4), receipt_row(5), receipt_row(4)])
    assert repeated.value.request_ids == ("req_000004",)
    assert await count_receipts(store_engine) == 2


@pytest.mark.parametrize(
    "changes",
    [
        {"created_at": datetime(2025, 1, 1)},  # naive: its zone is a guess
        {"weights_sha256": "ab"},
        {"provider_id": "p" * 65},
        {"request_id": ""},
        {"account_id": "a" * 41},
        {"body_json": ""},
    ],
)
def test_receipt_rows_are_checked(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        receipt_row(1, **changes)


# ---------------------------------------------------------------- audits


async def test_audits_page_newest_first_by_id(store_engine: AsyncEngine) -> None:
    store = VerificationStore(store_engine)
    saved: list[AuditRow] = []
    for request in range(7):
        for round_ in (1, 2):
            provider = PROVIDER if request % 2 == 0 else OTHER
            row = audit_row(
                request,
                round_,
                provider,
                outcome="failed" if round_ == 2 else "passed",
                reason="rank test failed" if round_ == 2 else None,
                id=999,  # ignored: the database assigns ids
            )
            row_id = await store.save_audit(row)
            saved.append(AuditRow(**{**_fields(row), "id": row_id}))
    ids = [row.id for row in saved]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)

    newest_first = list(reversed(saved))
    assert await store.audits() == newest_first[:50]
    pages: list[AuditRow] = []
    before: int | None = None
    while page := await store.audits(limit=4, before_id=before):
        assert len(page) <= 4
        pages.extend(page)
        before = page[-1].id
    assert pages == newest_first

    mine = await store.audits(provider_id=PROVIDER, limit=3)
    assert mine == [row for row in newest_first if row.provider_id == PROVIDER][:3]
    assert mine[-1].id is not None
    rest = await store.audits(provider_id=PROVIDER, before_id=mine[-1].id)
    assert mine + rest == [row for row in newest_first if row.provider_id == PROVIDER]
    assert await store.audits(request_id="req_000003") == [
        row for row in newest_first if row.request_id == "req_000003"
    ]
    assert await store.audits(provider_id=OTHER, request_id="req_000002") == []
    with pytest.raises(ValueError):
        await store.audits(limit=0)


def _fields(row: AuditRow) -> dict[str, object]:
    return {name: getattr(row, name) for name in AuditRow.__slots__}


@pytest.mark.parametrize("changes", [{"round": 0}, {"round": 4}, {"outcome": "maybe"}])
def test_audit_rows_are_checked(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        audit_row(1, 1, **changes)


@pytest.mark.parametrize(
    ("table", "assignment"),
    [
        ("audits", "outcome = 'maybe'"),
        ("audits", "round = 4"),
        ("audit_cases", "status = 'lost'"),
        ("audit_cases", "slashed_units = -1"),
        ("audit_cases", "refunded_units = -1"),
    ],
)
async def test_database_refuses_what_the_rows_refuse(
    store_engine: AsyncEngine, table: str, assignment: str
) -> None:
    """Rows written by anything but this module still obey the same rules."""
    store = VerificationStore(store_engine)
    await store.save_audit(audit_row(1, 1))
    await store.upsert_case(case_row(1))
    with pytest.raises(StoreError, match="constraint"):
        with translated(store_engine.url):
            async with store_engine.begin() as conn:
                await conn.execute(text(f"UPDATE {table} SET {assignment}"))
    assert [row.outcome for row in await store.audits()] == ["passed"]
    assert await store.case("req_000001") == case_row(1)


# ---------------------------------------------------------------- cases


async def test_upsert_case_overwrites_and_cases_filter(store_engine: AsyncEngine) -> None:
    store = VerificationStore(store_engine)
    opened = case_row(1)
    await store.upsert_case(opened)
    assert await store.case("req_000001") == opened
    upheld = case_row(
        1,
        status="upheld",
        reason="round 3 agreed: output is not the claimed model's",
        slashed_units=2**62,  # BIGINT: past what a 32-bit column holds
        refunded_units=7 * TOKEN,
        closed_at=T0 + timedelta(hours=1),
    )
    await store.upsert_case(upheld)
    assert await store.case("req_000001") == upheld
    assert await store.case("req_missing") is None

    others = [
        case_row(2, status="passed", closed_at=T0 + timedelta(seconds=3)),
        case_row(3, OTHER),
        case_row(4, OTHER, status="cleared", closed_at=T0 + timedelta(seconds=9)),
        case_row(5),
    ]
    for row in others:
        await store.upsert_case(row)
    by_recency = [others[3], others[2], others[1], others[0], upheld]
    assert await store.cases() == by_recency
    assert await store.cases(limit=2) == by_recency[:2]
    assert await store.cases(provider_id=PROVIDER) == [others[3], others[0], upheld]
    assert await store.cases(status="open") == [others[3], others[1]]
    assert await store.cases(provider_id=OTHER, status="open") == [others[1]]
    assert await store.cases(status="inconclusive") == []


@pytest.mark.parametrize(
    "changes",
    [
        {"status": "lost"},
        {"slashed_units": -1},
        {"refunded_units": 1.5},
        {"closed_at": datetime(2025, 1, 1)},
    ],
)
def test_case_rows_are_checked(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        case_row(1, **changes)


# ---------------------------------------------------------------- bans and violations


async def test_ban_is_idempotent(store_engine: AsyncEngine) -> None:
    store = VerificationStore(store_engine)
    assert await store.ban(PROVIDER, "tessera-tiny", "audit upheld", T0)
    assert not await store.ban(PROVIDER, "tessera-tiny", "again", T0 + timedelta(days=1))
    assert await store.ban(PROVIDER, "other-model", "audit upheld", T0)
    assert await store.ban(OTHER, "tessera-tiny", "challenge failed", T0)
    assert await store.bans() == [
        (PROVIDER, "other-model", "audit upheld", T0),
        (PROVIDER, "tessera-tiny", "audit upheld", T0),
        (OTHER, "tessera-tiny", "challenge failed", T0),
    ]
    assert await store.bans(OTHER) == [(OTHER, "tessera-tiny", "challenge failed", T0)]
    assert await store.bans(AUDITOR) == []


async def test_violations_newest_first_per_provider(store_engine: AsyncEngine) -> None:
    store = VerificationStore(store_engine)
    stored: list[ViolationRow] = []
    for index in range(5):
        row = violation_row(index, PROVIDER if index != 2 else OTHER)
        stored.append(
            ViolationRow(**{**_violation_fields(row), "id": await store.add_violation(row)})
        )
    unattached = violation_row(9, request_id=None, kind="downtime", detail="missed 3 heartbeats")
    stored.append(
        ViolationRow(
            **{**_violation_fields(unattached), "id": await store.add_violation(unattached)}
        )
    )
    mine = [row for row in reversed(stored) if row.provider_id == PROVIDER]
    assert await store.violations(PROVIDER) == mine
    assert await store.violations(PROVIDER, limit=2) == mine[:2]
    assert await store.violations(OTHER) == [stored[2]]
    assert await store.violations(AUDITOR) == []
    with pytest.raises(ValueError):
        await store.violations(PROVIDER, limit=-1)


def _violation_fields(row: ViolationRow) -> dict[str, object]:
    return {name: getattr(row, name) for name in ViolationRow.__slots__}


# ---------------------------------------------------------------- reputation


async def test_reputation_round_trips_and_upserts(store_engine: AsyncEngine) -> None:
    store = VerificationStore(store_engine)
    assert await store.load_reputation() == {}
    first = {
        PROVIDER: {"audits_passed": 12, "audits_failed": 0, "latency_ewma_ms": 0.1 + 0.2},
        OTHER: {"audits_passed": 3, "uptime": 1.0, "tiny": 5e-324, "huge": 2**62},
    }
    await store.save_reputation(first, T0)
    loaded = await store.load_reputation()
    assert loaded == first
    # Types survive too: 1.0 stays a float, 2**62 stays an int.
    assert {name: type(value) for name, value in loaded[OTHER].items()} == {
        "audits_passed": int,
        "uptime": float,
        "tiny": float,
        "huge": int,
    }

    await store.save_reputation({PROVIDER: {"audits_passed": 13, "audits_failed": 1}}, T0)
    await store.save_reputation({}, T0)
    assert await store.load_reputation() == {
        PROVIDER: {"audits_passed": 13, "audits_failed": 1},
        OTHER: first[OTHER],
    }
    for bad in (float("nan"), float("inf"), True, "12"):
        with pytest.raises(ValueError):
            await store.save_reputation({PROVIDER: {"audits_passed": bad}}, T0)  # type: ignore[dict-item]
    with pytest.raises(ValueError):
        await store.save_reputation({PROVIDER: {"audits_passed": 1}}, datetime(2025, 1, 1))
    assert (await store.load_reputation())[PROVIDER] == {"audits_passed": 13, "audits_failed": 1}


async def test_unreadable_reputation_is_a_store_error(store_engine: AsyncEngine) -> None:
    store = VerificationStore(store_engine)
    await store.save_reputation({PROVIDER: {"audits_passed": 1}}, T0)
    async with store_engine.begin() as conn:
        await conn.execute(text("UPDATE provider_reputation SET stats_json = '[1, 2]'"))
    with pytest.raises(StoreError, match="not an object of numbers"):
        await store.load_reputation()


# ---------------------------------------------------------------- the writer


async def test_writer_flushes_everything_on_close(store_engine: AsyncEngine) -> None:
    store = VerificationStore(store_engine)
    writer = ReceiptWriter(store, batch_size=64, flush_interval_s=3600)
    await writer.start()
    rows = [receipt_row(index) for index in range(300)]
    for row in rows:
        writer.submit(row)
    await writer.close()
    assert (writer.written, writer.dropped, writer.backlog) == (300, 0, 0)
    assert writer.batches == 5  # 64 at a time: group commit, not a transaction per receipt
    assert await count_receipts(store_engine) == 300
    assert writer.pending(rows[0].request_id) is None
    assert await store.receipt(rows[-1].request_id) == rows[-1]


async def test_flush_writes_without_waiting_for_the_interval(store_engine: AsyncEngine) -> None:
    """With an hour between timed flushes, only flush() can have written these."""
    store = VerificationStore(store_engine)
    writer = ReceiptWriter(store, batch_size=100, flush_interval_s=3600)
    await writer.start()
    try:
        for index in range(3):
            writer.submit(receipt_row(index))
        await asyncio.sleep(0)  # the writer is now asleep for its interval
        await writer.flush()
        assert (writer.written, writer.backlog) == (3, 0)
        assert await count_receipts(store_engine) == 3
        await writer.flush()  # nothing pending: returns at once
        writer.submit(receipt_row(3))
        await writer.flush()
        assert await store.receipt("req_000003") == receipt_row(3)
    finally:
        await writer.close()


async def _lock_receipts_table(conn: AsyncConnection) -> None:
    if conn.dialect.name == "sqlite":
        await conn.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})
        await conn.begin()
    else:
        await conn.begin()
        await conn.execute(text("LOCK TABLE receipts IN EXCLUSIVE MODE"))


async def test_pending_serves_receipts_until_they_are_stored(migrated_url: str) -> None:
    """A receipt read right after the response is found while its batch waits on the database."""
    locker = create_engine(migrated_url)
    engine = create_engine(migrated_url)
    store = VerificationStore(engine)
    writer = ReceiptWriter(store, batch_size=5, flush_interval_s=0.01)
    rows = [receipt_row(index) for index in range(12)]
    try:
        async with locker.connect() as lock_conn:
            await _lock_receipts_table(lock_conn)
            await writer.start()
            for row in rows:
                writer.submit(row)
                await asyncio.sleep(0)  # let the writer take (blocked) batches
            assert writer.written == 0
            for row in rows:
                assert writer.pending(row.request_id) == row
            await lock_conn.rollback()
        await writer.flush()
        assert [writer.pending(row.request_id) for row in rows] == [None] * len(rows)
        assert [await store.receipt(row.request_id) for row in rows] == rows
        assert (writer.written, writer.dropped) == (12, 0)
        assert writer.pending("req_never") is None
    finally:
        await writer.close()
        await engine.dispose()
        await locker.dispose()


async def test_writer_settles_receipts_already_stored(store_engine: AsyncEngine) -> None:
    """A batch retried after an unclear commit writes the rest; a conflicting receipt is
    dropped and the stored one kept."""
    store = VerificationStore(store_engine)
    await store.save_receipts([receipt_row(1), receipt_row(2)])
    other = SigningKey(bytes(range(2, 34)))
    writer = ReceiptWriter(store, batch_size=10)
    for row in (receipt_row(0), receipt_row(1), receipt_row(2, provider_key=other), receipt_row(3)):
        writer.submit(row)
    await writer.close()
    assert (writer.written, writer.dropped, writer.backlog) == (3, 1, 0)
    assert [await store.receipt(f"req_{index:06d}") for index in range(4)] == [
        receipt_row(index) for index in range(4)
    ]


async def test_submit_refuses_a_second_receipt_for_a_queued_request(
    store_engine: AsyncEngine,
) -> None:
    writer = ReceiptWriter(VerificationStore(store_engine))
    writer.submit(receipt_row(1))
    writer.submit(receipt_row(1))  # the same receipt again: nothing to do
    writer.submit(receipt_row(1, account_id="acct_someone_else"))
    assert (writer.backlog, writer.dropped) == (1, 1)
    assert writer.pending("req_000001") == receipt_row(1)
    await writer.close()
    assert (writer.written, writer.dropped) == (1, 1)


async def test_full_queue_drops_the_oldest(store_engine: AsyncEngine) -> None:
    store = VerificationStore(store_engine)
    writer = ReceiptWriter(store, max_pending=3, batch_size=100)
    for index in range(5):
        writer.submit(receipt_row(index))
    assert (writer.backlog, writer.dropped) == (3, 2)
    assert writer.pending("req_000000") is None
    assert writer.pending("req_000004") == receipt_row(4)
    await writer.close()  # never started: close still writes
    assert [await store.receipt(f"req_{index:06d}") is not None for index in range(5)] == [
        False,
        False,
        True,
        True,
        True,
    ]


async def test_submit_after_close_is_counted_not_raised(store_engine: AsyncEngine) -> None:
    writer = ReceiptWriter(VerificationStore(store_engine))
    await writer.start()
    await writer.close()
    writer.submit(receipt_row(1))
    assert (writer.dropped, writer.backlog) == (1, 0)
    assert writer.pending("req_000001") is None
    assert await count_receipts(store_engine) == 0


async def test_unreachable_database_at_close_is_counted(unreachable_postgres_url: str) -> None:
    engine = create_engine(unreachable_postgres_url)
    writer = ReceiptWriter(VerificationStore(engine), batch_size=2, flush_interval_s=3600)
    try:
        for index in range(5):
            writer.submit(receipt_row(index))
        await writer.close()
    finally:
        await engine.dispose()
    assert (writer.written, writer.dropped, writer.backlog) == (0, 5, 0)
    assert writer.pending("req_000000") is None


# ---------------------------------------------------------------- migration 0003


def _migrate(connection: Connection, direction: str, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    getattr(command, direction)(config, revision)


def _schema_diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


def _table_names(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


async def test_head_downgrades_to_0002_and_upgrades_again(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_migrate, "upgrade", "head")
        assert await current_revision(database_url) == head_revision() >= "0003"
        ledger = Ledger()
        mint(ledger, ACCOUNT, 5 * TOKEN, "dep1", 1_741_000_000.0)
        await LedgerStore(engine).append(ledger.entries)
        await VerificationStore(engine).save_receipts([receipt_row(1)])

        async with engine.begin() as conn:
            await conn.run_sync(_migrate, "downgrade", "0002")
            tables = await conn.run_sync(_table_names)
        assert await current_revision(database_url) == "0002"
        assert not tables & VERIFICATION_TABLES
        assert {"ledger_entries", "requests", "accounts"} <= tables
        assert await LedgerStore(engine).load() == list(ledger.entries)  # 0002's data survives

        async with engine.begin() as conn:
            await conn.run_sync(_migrate, "upgrade", "head")
            assert await conn.run_sync(_schema_diff) == []
            assert VERIFICATION_TABLES <= await conn.run_sync(_table_names)
        store = VerificationStore(engine)
        assert await store.receipt("req_000001") is None  # downgrading dropped it
        await store.save_receipts([receipt_row(1)])
        assert await store.save_audit(audit_row(1, 1)) == 1  # ids start afresh
        assert await LedgerStore(engine).check() == []
    finally:
        await engine.dispose()
