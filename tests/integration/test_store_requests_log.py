"""RequestLog and RequestLogWriter on a real database."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tessera.store.engine import SQLITE_BEGIN_OPTION, create_engine
from tessera.store.errors import StoreError, translated
from tessera.store.requests_log import RequestLog, RequestLogWriter, RequestRecord
from tessera.store.tables import requests

pytestmark = pytest.mark.integration

T0 = datetime(2025, 2, 3, 4, 5, 6, 789000, tzinfo=UTC)


def record(index: int, **changes: object) -> RequestRecord:
    fields: dict[str, object] = {
        "request_id": f"req_{index:06d}",
        "api_key_id": "key_0123456789abcdef",
        "endpoint": "chat.completions",
        "model": "tessera-tiny",
        "provider_id": "ab" * 32,
        "status": "ok",
        "error_code": None,
        "prompt_tokens": 10 + index,
        "completion_tokens": 20,
        "latency_ms": 150,
        "ttft_ms": 12,
        "created_at": T0 + timedelta(milliseconds=index),
    }
    fields.update(changes)
    return RequestRecord(**fields)  # type: ignore[arg-type]


async def count_rows(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(requests))).scalar_one())


async def test_write_many_then_get_round_trips(store_engine: AsyncEngine) -> None:
    log = RequestLog(store_engine)
    written = [
        record(1),
        record(2, endpoint="embeddings", completion_tokens=0, ttft_ms=None),
        record(3, status="error", error_code="provider_failed", provider_id=None),
        record(4, endpoint="completions", status="cancelled"),
    ]
    await log.write_many(written)
    for item in written:
        assert await log.get(item.request_id) == item
    assert await log.get("req_missing") is None


async def test_cost_and_prices_round_trip(store_engine: AsyncEngine) -> None:
    log = RequestLog(store_engine)
    billed = record(
        7,
        account_id="acct_0123456789abcdef",
        cost=2**62,  # BIGINT: far past what a 32-bit column holds
        price_input_per_mtok=150_000_000,
        price_output_per_mtok=600_000_000,
    )
    unbilled = record(8)
    await log.write_many([billed, unbilled])
    assert await log.get(billed.request_id) == billed
    stored = await log.get(unbilled.request_id)
    assert stored is not None and stored == unbilled
    assert (stored.cost, stored.account_id) == (0, None)


async def test_for_account_is_newest_first_and_pages_backwards(store_engine: AsyncEngine) -> None:
    log = RequestLog(store_engine)
    mine = [record(index, account_id="acct_mine") for index in range(6)]
    theirs = [record(100 + index, account_id="acct_theirs") for index in range(3)]
    await log.write_many([*theirs, *mine, record(200)])

    newest = list(reversed(mine))
    assert await log.for_account("acct_mine", 10) == newest
    assert await log.for_account("acct_mine", 4) == newest[:4]
    page_two = await log.for_account("acct_mine", 4, before=newest[3].created_at)
    assert page_two == newest[4:]
    assert await log.for_account("acct_mine", 4, before=mine[0].created_at) == []
    assert await log.for_account("acct_theirs", 10) == list(reversed(theirs))
    assert await log.for_account("acct_nobody", 10) == []
    with pytest.raises(ValueError):
        await log.for_account("acct_mine", 0)


async def test_database_refuses_negative_money(store_engine: AsyncEngine) -> None:
    """The CHECK holds even for writers that skip RequestRecord's validation."""
    await RequestLog(store_engine).write_many([record(1)])
    for column in ("cost", "price_input_per_mtok", "price_output_per_mtok"):
        with pytest.raises(StoreError, match="constraint"):
            with translated(store_engine.url):
                async with store_engine.begin() as conn:
                    await conn.execute(text(f"UPDATE requests SET {column} = -1"))
    stored = await RequestLog(store_engine).get("req_000001")
    assert stored == record(1)


async def test_write_many_skips_ids_already_stored(store_engine: AsyncEngine) -> None:
    """A batch retried after an unclear failure must neither fail nor duplicate."""
    log = RequestLog(store_engine)
    await log.write_many([record(1), record(2)])
    await log.write_many([record(2, model="other"), record(3)])
    assert await count_rows(store_engine) == 3
    stored = await log.get("req_000002")
    assert stored is not None and stored.model == "tessera-tiny"


async def test_writer_flushes_everything_on_close(store_engine: AsyncEngine) -> None:
    writer = RequestLogWriter(RequestLog(store_engine), batch_size=64, flush_interval_s=30)
    await writer.start()
    for index in range(1000):
        writer.submit(record(index))
    await writer.close()
    assert (writer.written, writer.dropped, writer.pending) == (1000, 0, 0)
    assert await count_rows(store_engine) == 1000


async def _lock_requests_table(conn: AsyncConnection) -> None:
    if conn.dialect.name == "sqlite":
        await conn.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})
        await conn.begin()
    else:
        await conn.begin()
        await conn.execute(text("LOCK TABLE requests IN EXCLUSIVE MODE"))


async def test_submit_never_waits_for_a_blocked_database(migrated_url: str) -> None:
    """With the table write-locked elsewhere, submit keeps accepting; nothing is lost after."""
    locker = create_engine(migrated_url)
    engine = create_engine(migrated_url)
    writer = RequestLogWriter(RequestLog(engine), batch_size=10, flush_interval_s=0.01)
    try:
        async with locker.connect() as lock_conn:
            await _lock_requests_table(lock_conn)
            await writer.start()
            for index in range(500):
                writer.submit(record(index))
                if index % 50 == 0:
                    await asyncio.sleep(0)  # let the writer start a (blocked) batch
            assert writer.written == 0
            assert writer.dropped == 0
            await lock_conn.rollback()
        await writer.close()
        assert (writer.written, writer.dropped) == (500, 0)
        assert await count_rows(engine) == 500
    finally:
        await engine.dispose()
        await locker.dispose()


async def test_full_queue_drops_the_oldest(store_engine: AsyncEngine) -> None:
    writer = RequestLogWriter(RequestLog(store_engine), max_pending=3, batch_size=100)
    for index in range(5):
        writer.submit(record(index))
    assert (writer.pending, writer.dropped) == (3, 2)
    await writer.close()  # never started: close still flushes
    log = RequestLog(store_engine)
    assert [await log.get(f"req_{index:06d}") is not None for index in range(5)] == [
        False,
        False,
        True,
        True,
        True,
    ]


async def test_submit_after_close_is_counted_not_raised(store_engine: AsyncEngine) -> None:
    writer = RequestLogWriter(RequestLog(store_engine))
    await writer.start()
    await writer.close()
    writer.submit(record(1))
    assert (writer.dropped, writer.pending) == (1, 0)
    assert await count_rows(store_engine) == 0


async def test_unreachable_database_at_close_is_counted(unreachable_postgres_url: str) -> None:
    engine = create_engine(unreachable_postgres_url)
    writer = RequestLogWriter(RequestLog(engine), batch_size=2, flush_interval_s=30)
    try:
        for index in range(5):
            writer.submit(record(index))
        await writer.close()
    finally:
        await engine.dispose()
    assert (writer.written, writer.dropped, writer.pending) == (0, 5, 0)
