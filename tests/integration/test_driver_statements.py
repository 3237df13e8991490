"""driver_statements: the hot writers' statements run by the SQLite driver store exactly
what SQLAlchemy's own execution stores, raise SQLAlchemy's errors, and step aside where
they could not."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, func, select
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import sqlite

from tessera.store import driver_statements, verification
from tessera.store import ledger as ledger_store
from tessera.store.driver_statements import execute_many, scalar
from tessera.store.requests_log import _final_records_upsert
from tessera.store.tables import metadata, receipts, requests

pytestmark = pytest.mark.integration

T0 = datetime(2026, 12, 7, 8, 30, 15, 123456, tzinfo=UTC)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_sync_engine(f"sqlite+pysqlite:///{tmp_path / 'db.sqlite'}")
    metadata.create_all(engine)
    try:
        yield engine
    finally:
        engine.dispose()


def stored(engine: Engine, table: str) -> list[tuple[Any, ...]]:
    """The rows as the file holds them (timestamps as the text SQLAlchemy wrote)."""
    path = engine.url.database
    assert path is not None
    with sqlite3.connect(path) as raw:
        return raw.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()


def request_row(request_id: str, status: str, **changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "request_id": request_id,
        "api_key_id": "key_1",
        "endpoint": "chat.completions",
        "model": "tessera-tiny",
        "provider_id": "ab" * 32,
        "status": status,
        "error_code": None,
        "prompt_tokens": 12,
        "completion_tokens": 4,
        "latency_ms": 7,
        "ttft_ms": None,
        "created_at": T0,
        "account_id": "acct_1",
        "cost": 1_234_567_890_123,
        "price_input_per_mtok": 100,
        "price_output_per_mtok": 300,
    }
    return row | changes


def receipt_row(request_id: str, created_at: datetime) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "job_id": f"{request_id}.0",
        "provider_id": "cd" * 32,
        "model": "mock",
        "weights_sha256": "ef" * 32,
        "account_id": "acct_1",
        "body_json": '{"receipt": "é \\u2028"}',
        "created_at": created_at,
    }


def fill(engine: Engine, run: Any) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The same writes through ``run(conn, statement, rows)``; the tables as stored."""
    metadata.create_all(engine)
    upsert = _final_records_upsert("sqlite")
    # r1's final record replaces its in_flight row; r2's second record changes nothing.
    final = [request_row("r1", "ok", latency_ms=9), request_row("r2", "error", latency_ms=1)]
    later = T0 + timedelta(microseconds=1)
    for statement, rows in (
        (upsert, [request_row("r1", "in_flight")]),
        (upsert, [request_row("r2", "ok")]),
        (upsert, final),
        (receipts.insert(), [receipt_row("r1", T0), receipt_row("r2", later)]),
    ):
        with engine.begin() as conn:
            run(conn, statement, rows)
    return stored(engine, "requests"), stored(engine, "receipts")


def test_the_driver_stores_what_sqlalchemy_stores(tmp_path: Path) -> None:
    """Same rows through both paths, two files: byte-for-byte the same tables."""
    files = []
    for name, run in (
        ("sqlalchemy", lambda conn, stmt, rows: conn.execute(stmt, rows)),
        ("driver", execute_many),
    ):
        engine = create_sync_engine(f"sqlite+pysqlite:///{tmp_path / name}.sqlite")
        try:
            files.append(fill(engine, run))
        finally:
            engine.dispose()
    assert files[0] == files[1]
    requests_rows, receipt_rows = files[1]
    assert [(r[0], r[5], r[9]) for r in requests_rows] == [("r1", "ok", 9), ("r2", "ok", 7)]
    assert [r[-1] for r in receipt_rows] == [
        "2026-12-07 08:30:15.123456",
        "2026-12-07 08:30:15.123457",
    ]


def test_a_driver_error_is_sqlalchemys(engine: Engine) -> None:
    """A duplicate key raises IntegrityError as conn.execute would (what translated() and
    the receipt store's duplicate check catch), and the transaction writes nothing."""
    with engine.begin() as conn:
        execute_many(conn, receipts.insert(), [receipt_row("r1", T0)])
    with pytest.raises(sa_exc.IntegrityError) as caught:
        with engine.begin() as conn:
            execute_many(conn, receipts.insert(), [receipt_row("r2", T0), receipt_row("r1", T0)])
    assert isinstance(caught.value.orig, sqlite3.IntegrityError)
    assert [r[0] for r in stored(engine, "receipts")] == ["r1"]


def test_scalar_reads_through_the_driver(engine: Engine) -> None:
    stmt = select(func.max(requests.c.prompt_tokens))
    with engine.begin() as conn:
        assert scalar(conn, stmt) is None
        execute_many(
            conn,
            _final_records_upsert("sqlite"),
            [request_row("a", "ok", prompt_tokens=5), request_row("b", "ok", prompt_tokens=11)],
        )
        assert scalar(conn, stmt) == 11
        assert scalar(conn, select(func.count()).select_from(requests)) == 2


def test_a_timestamp_result_is_left_to_sqlalchemy(engine: Engine) -> None:
    """A column whose value needs converting on the way out comes back converted."""
    with engine.begin() as conn:
        execute_many(conn, receipts.insert(), [receipt_row("r1", T0)])
        assert scalar(conn, select(func.max(receipts.c.created_at))) == T0


def test_what_only_sqlalchemy_can_run_goes_through_it(engine: Engine) -> None:
    """A Python-side default, rows of different shapes and PostgreSQL take conn.execute."""
    extra = MetaData()
    table = Table(
        "counters",
        extra,
        Column("name", String(10), primary_key=True),
        Column("value", Integer, default=lambda: 42),
    )
    extra.create_all(engine)
    with engine.begin() as conn:
        execute_many(conn, table.insert(), [{"name": "a"}])
        assert conn.execute(select(table.c.value)).scalar() == 42
        assert driver_statements._plan_for(conn.dialect, table.insert(), ("name",)) is None
        with pytest.raises(sa_exc.StatementError):
            execute_many(
                conn,
                receipts.insert(),
                [receipt_row("r1", T0), {"request_id": "only an id"}],
            )
    assert stored(engine, "receipts") == []
    assert driver_statements._plan_for(postgresql_dialect(), receipts.insert(), ("a",)) is None


def postgresql_dialect() -> Any:
    from sqlalchemy.dialects import postgresql

    return postgresql.psycopg.dialect()


def test_the_sqlite_dialect_takes_positional_parameters() -> None:
    """What the driver path relies on: pysqlite's qmark style."""
    assert sqlite.pysqlite.dialect().paramstyle == "qmark"


def test_the_hot_writers_statements_run_on_the_driver(engine: Engine) -> None:
    """The journal's, the request log's and the receipts' statements never fall back."""
    ledger = ledger_store._statements("sqlite")
    statements = (
        (ledger.entries, ("entry_id", "kind", "reference", "at", "memo")),
        (ledger.postings, ("entry_id", "account", "amount")),
        (ledger.balances, ("account", "balance", "last_entry_id")),
        (_final_records_upsert("sqlite"), tuple(request_row("r", "ok"))),
        (verification._INSERT_RECEIPT, tuple(receipt_row("r", T0))),
        (ledger_store._MAX_ENTRY_ID, ()),
    )
    for statement, keys in statements:
        assert driver_statements._plan_for(engine.dialect, statement, keys) is not None
