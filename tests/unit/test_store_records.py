"""Pure parts of the store: key generation and hashing, record validation, error mapping."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import make_url

from tessera.store.api_keys import ApiKeyRecord, generate_api_key, hash_api_key
from tessera.store.errors import StoreError, translate
from tessera.store.requests_log import RequestRecord
from tessera.store.tables import UtcDateTime

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def test_generated_keys_are_prefixed_random_and_url_safe() -> None:
    keys = {generate_api_key() for _ in range(200)}
    assert len(keys) == 200
    for key in keys:
        assert key.startswith("tsk_") and len(key) == 4 + 43
        assert all(ch.isalnum() or ch in "-_" for ch in key[4:])


def test_hash_is_sha256_hex() -> None:
    assert hash_api_key("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    key = generate_api_key()
    assert hash_api_key(key) == hash_api_key(key) != hash_api_key(key + "_")


def test_api_key_record_is_frozen() -> None:
    record = ApiKeyRecord("key_1", "n", "h" * 64, "tsk_abcd", NOW, None, "acct_1", None, 5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.spend_cap_daily = None  # type: ignore[misc]
    assert not record.revoked


def _request(**changes: object) -> RequestRecord:
    fields: dict[str, object] = dict(
        request_id="req_1",
        api_key_id="key_1",
        endpoint="chat.completions",
        model="m",
        provider_id=None,
        status="ok",
        error_code=None,
        prompt_tokens=1,
        completion_tokens=2,
        latency_ms=3,
        ttft_ms=None,
        created_at=NOW,
    )
    fields.update(changes)
    return RequestRecord(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes",
    [
        {"endpoint": "images"},
        {"status": "done"},
        {"prompt_tokens": -1},
        {"completion_tokens": -1},
        {"latency_ms": -1},
        {"ttft_ms": -1},
        {"created_at": datetime(2025, 1, 1)},
        {"cost": -1},
        {"cost": 1.5},
        {"cost": None},
        {"price_input_per_mtok": -1},
        {"price_output_per_mtok": 2.0},
        {"price_output_per_mtok": True},
    ],
)
def test_request_record_refuses_nonsense(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        _request(**changes)


def test_request_record_money_defaults_keep_old_callers_working() -> None:
    unbilled = _request()
    assert (unbilled.account_id, unbilled.cost) == (None, 0)
    assert (unbilled.price_input_per_mtok, unbilled.price_output_per_mtok) == (None, None)
    billed = _request(account_id="acct_1", cost=0, price_input_per_mtok=0, price_output_per_mtok=7)
    assert billed.price_output_per_mtok == 7


def test_utc_datetime_refuses_naive_and_normalises_zones() -> None:
    column_type = UtcDateTime()
    dialect = sqlite.dialect()
    with pytest.raises(ValueError, match="naive"):
        column_type.process_bind_param(datetime(2025, 1, 1), dialect)
    plus_two = datetime(2025, 1, 1, 2, tzinfo=timezone(timedelta(hours=2)))
    bound = column_type.process_bind_param(plus_two, dialect)
    assert bound is not None and bound.tzinfo == UTC and bound.hour == 0
    assert column_type.process_result_value(datetime(2025, 1, 1), dialect) == NOW


def _operational(message: str) -> sa_exc.OperationalError:
    return sa_exc.OperationalError("SELECT 1", {}, Exception(message))


@pytest.mark.parametrize(
    ("error", "url", "expected", "retryable"),
    [
        (
            ConnectionRefusedError(111, "refused"),
            "postgresql+asyncpg://u@db.internal:6543/t",
            "cannot reach PostgreSQL at db.internal:6543",
            True,
        ),
        (
            _operational("unable to open database file"),
            "sqlite+aiosqlite:////srv/t.db",
            "cannot open the SQLite database /srv/t.db",
            False,
        ),
        (
            _operational("database is locked"),
            "sqlite+aiosqlite:////srv/t.db",
            "several gateway processes need PostgreSQL",
            True,
        ),
        (
            _operational("no such table: api_keys"),
            "sqlite+aiosqlite:////srv/t.db",
            "run the migrations",
            False,
        ),
        (
            _operational("disk I/O error"),
            "sqlite+aiosqlite:////srv/t.db",
            "SQLite error on /srv/t.db: disk I/O error",
            False,
        ),
    ],
)
def test_translate_names_the_fix(
    error: Exception, url: str, expected: str, retryable: bool
) -> None:
    translated = translate(error, make_url(url))
    assert isinstance(translated, StoreError)
    assert expected in translated.message
    assert translated.retryable is retryable
    assert "[SQL:" not in translated.message
