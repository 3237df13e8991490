"""The schema, as SQLAlchemy Core tables. Migrations in ``migrations/versions`` build exactly this.

Times are timezone-aware UTC everywhere (:class:`UtcDateTime`); counts are integers.
A test checks that the migrated database and this metadata never drift apart.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


def utc_now() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """``timestamptz`` on PostgreSQL, text on SQLite; always aware UTC on the Python side.

    Naive datetimes are refused on the way in: their zone is a guess.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware time")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        # SQLite hands back the naive UTC time we stored.
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("key_hash", String(64), nullable=False),
    Column("prefix", String(16), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("revoked_at", UtcDateTime(), nullable=True),
    Index(None, "key_hash", unique=True),
)

providers = Table(
    "providers",
    metadata,
    Column("provider_id", String(64), primary_key=True),
    Column("label", String(200), nullable=False),
    Column("region", String(64), nullable=False),
    Column("agent_version", String(64), nullable=False),
    Column("capabilities", Text(), nullable=False),
    Column("first_seen_at", UtcDateTime(), nullable=False),
    Column("last_seen_at", UtcDateTime(), nullable=False),
)

# No foreign keys on the request log: it is append-only history, written in batches off
# the hot path, and a batch must never fail because a key or provider row lags behind.
requests = Table(
    "requests",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("api_key_id", String(32), nullable=False),
    Column("endpoint", String(32), nullable=False),
    Column("model", String(200), nullable=False),
    Column("provider_id", String(64), nullable=True),
    Column("status", String(16), nullable=False),
    Column("error_code", String(64), nullable=True),
    Column("prompt_tokens", Integer(), nullable=False),
    Column("completion_tokens", Integer(), nullable=False),
    Column("latency_ms", Integer(), nullable=False),
    Column("ttft_ms", Integer(), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    CheckConstraint(
        "prompt_tokens >= 0 AND completion_tokens >= 0 AND latency_ms >= 0 "
        "AND (ttft_ms IS NULL OR ttft_ms >= 0)",
        name="non_negative",
    ),
    Index(None, "api_key_id", "created_at"),
    Index(None, "provider_id", "created_at"),
)
