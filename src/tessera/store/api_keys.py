"""API keys: generated once, shown once, stored only as a SHA-256 hash.

Why a fast hash and not bcrypt/argon2: those slow hashes exist to protect low-entropy
human passwords from guessing. Our keys are 256 bits from ``secrets``; no amount of
guessing finds a preimage of their SHA-256, so a slow hash would add latency to every
request and nothing to security. A fast, deterministic hash also lets the gateway look a
key up by an indexed equality match instead of scanning and verifying every row.

Every key spends from one account (``account_id``); its optional spend caps are base
units, NULL meaning no cap. Its optional limits (concurrent requests, requests and tokens
per minute) override the gateway's defaults, NULL meaning the default applies. The
gateway enforces caps and limits; the store only keeps them.

The change signal: every write to a key (create, revoke, caps, policy, limits) sets its
``changed_at`` in the same statement. Running gateways, in this process or any other,
poll :meth:`ApiKeyStore.changes_since` (one indexed range read) to evict changed keys
from their auth caches, so a revoke from the CLI takes effect within a fraction of a
second without a database read per request.
"""

from __future__ import annotations

import builtins
import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from tessera.errors import InvalidRequest
from tessera.store.accounts import account_exists, insert_account
from tessera.store.errors import translated
from tessera.store.tables import api_keys, utc_now

KEY_PREFIX = "tsk_"
DISPLAY_PREFIX_CHARS = 8  # "tsk_" + 4 random characters: enough to tell keys apart
MAX_NAME_CHARS = 200
MAX_CAP = 2**63 - 1  # a BIGINT column
MAX_LIMIT = 2**31 - 1  # an INTEGER column (concurrency, requests per minute)


def generate_api_key() -> str:
    """A new plaintext key: ``tsk_`` + 32 random bytes, URL-safe base64 (43 characters)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """SHA-256 hex of the key: what is stored and looked up (see the module docstring)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """One stored key. Holds the hash and the display prefix, never the plaintext."""

    id: str
    name: str
    key_hash: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None
    account_id: str
    spend_cap_total: int | None  # base units over the key's life; None = no cap
    spend_cap_daily: int | None  # base units per UTC day; None = no cap
    # Default routing policy, the JSON of a request's ``provider`` object; None = none.
    policy_json: str | None = None
    # Overrides of the gateway's default limits; None = the default applies.
    max_concurrent_requests: int | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    changed_at: datetime | None = None  # last write to the key (the change signal)

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    @property
    def limits(self) -> KeyLimits:
        return KeyLimits(
            self.max_concurrent_requests, self.requests_per_minute, self.tokens_per_minute
        )


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """A key's own limits; None in a field means the gateway's default applies."""

    max_concurrent_requests: int | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None


@dataclass(frozen=True, slots=True)
class KeyChange:
    """One key written at ``changed_at``: what a gateway evicts from its cache."""

    key_hash: str
    changed_at: datetime


class ApiKeyStore:
    """Create, find, revoke and list API keys in the ``api_keys`` table."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(
        self,
        name: str,
        *,
        account_id: str | None = None,
        spend_cap_total: int | None = None,
        spend_cap_daily: int | None = None,
        policy_json: str | None = None,
        limits: KeyLimits | None = None,
    ) -> tuple[str, ApiKeyRecord]:
        """Store a new key named ``name``; returns (plaintext, record). The plaintext is not kept.

        Without ``account_id`` the key gets a new account of its own, named after it, in
        the same transaction; an ``account_id`` that does not exist is an InvalidRequest.
        """
        name = name.strip()
        if not name or len(name) > MAX_NAME_CHARS:
            raise InvalidRequest(
                f"an API key name must be 1 to {MAX_NAME_CHARS} characters", param="name"
            )
        _check_cap(spend_cap_total, "spend_cap_total")
        _check_cap(spend_cap_daily, "spend_cap_daily")
        limits = limits or KeyLimits()
        _check_limits(limits)
        key = generate_api_key()
        now = utc_now()
        with translated(self._engine.url):
            async with self._engine.begin() as conn:
                if account_id is None:
                    account_id = (await insert_account(conn, name)).id
                elif not await account_exists(conn, account_id):
                    raise InvalidRequest(f"no account {account_id!r}", param="account")
                record = ApiKeyRecord(
                    id="key_" + secrets.token_hex(8),
                    name=name,
                    key_hash=hash_api_key(key),
                    prefix=key[:DISPLAY_PREFIX_CHARS],
                    created_at=now,
                    revoked_at=None,
                    account_id=account_id,
                    spend_cap_total=spend_cap_total,
                    spend_cap_daily=spend_cap_daily,
                    policy_json=policy_json,
                    max_concurrent_requests=limits.max_concurrent_requests,
                    requests_per_minute=limits.requests_per_minute,
                    tokens_per_minute=limits.tokens_per_minute,
                    changed_at=now,
                )
                await conn.execute(insert(api_keys).values(**_row(record)))
        return key, record

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        """The key with this id, revoked or not."""
        stmt = select(api_keys).where(api_keys.c.id == key_id)
        with translated(self._engine.url):
            async with self._engine.connect() as conn:
                row = (await conn.execute(stmt)).mappings().first()
        return None if row is None else ApiKeyRecord(**row)

    async def set_caps(
        self, key_id: str, *, spend_cap_total: int | None, spend_cap_daily: int | None
    ) -> bool:
        """Replace both caps (None lifts one); False if the key does not exist."""
        _check_cap(spend_cap_total, "spend_cap_total")
        _check_cap(spend_cap_daily, "spend_cap_daily")
        return await self._change(
            key_id, spend_cap_total=spend_cap_total, spend_cap_daily=spend_cap_daily
        )

    async def set_policy(self, key_id: str, policy_json: str | None) -> bool:
        """Replace the key's default routing policy (None clears it); False if no such key.

        The caller validates the policy (gateway.routing.parse_key_policy); running
        gateways see the change through ``changed_at`` (see the module docstring).
        """
        return await self._change(key_id, policy_json=policy_json)

    async def set_limits(self, key_id: str, limits: KeyLimits) -> bool:
        """Replace the key's three limits (None: the gateway's default); False if no such key."""
        _check_limits(limits)
        return await self._change(
            key_id,
            max_concurrent_requests=limits.max_concurrent_requests,
            requests_per_minute=limits.requests_per_minute,
            tokens_per_minute=limits.tokens_per_minute,
        )

    async def _change(self, key_id: str, **values: Any) -> bool:
        """Write ``values`` and the change signal to one key; False if it does not exist."""
        stmt = (
            update(api_keys).where(api_keys.c.id == key_id).values(**values, changed_at=utc_now())
        )
        with translated(self._engine.url):
            async with self._engine.begin() as conn:
                result = await conn.execute(stmt)
        return result.rowcount == 1

    async def find_by_hash(self, key_hash: str) -> ApiKeyRecord | None:
        """The active (not revoked) key with this hash, or None. One indexed lookup."""
        stmt = select(api_keys).where(
            api_keys.c.key_hash == key_hash, api_keys.c.revoked_at.is_(None)
        )
        with translated(self._engine.url):
            async with self._engine.connect() as conn:
                row = (await conn.execute(stmt)).mappings().first()
        return None if row is None else ApiKeyRecord(**row)

    async def revoke(self, key_id: str) -> bool:
        """Revoke the key; True if this call revoked it, False if unknown or already revoked."""
        now = utc_now()
        stmt = (
            update(api_keys)
            .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=now, changed_at=now)
        )
        with translated(self._engine.url):
            async with self._engine.begin() as conn:
                result = await conn.execute(stmt)
        return result.rowcount == 1

    async def last_change(self) -> datetime | None:
        """The newest ``changed_at`` of any key (None when there are none): one index read."""
        stmt = select(func.max(api_keys.c.changed_at))
        with translated(self._engine.url):
            async with self._engine.connect() as conn:
                value = (await conn.execute(stmt)).scalar()
        return _aware(value)

    async def changes_since(self, since: datetime, limit: int) -> builtins.list[KeyChange]:
        """Keys changed at or after ``since`` after their creation, oldest change first.

        One range read on the ``changed_at`` index, at most ``limit`` rows. A key's
        creation is not a change: no gateway can have cached a key before it existed.
        """
        stmt = (
            select(api_keys.c.key_hash, api_keys.c.changed_at)
            .where(api_keys.c.changed_at >= since, api_keys.c.changed_at > api_keys.c.created_at)
            .order_by(api_keys.c.changed_at)
            .limit(limit)
        )
        with translated(self._engine.url):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(stmt)).all()
        return [KeyChange(row.key_hash, row.changed_at) for row in rows]

    async def list(self, account_id: str | None = None) -> builtins.list[ApiKeyRecord]:
        """Every key (of one account, if given), revoked ones included, oldest first."""
        stmt = select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
        if account_id is not None:
            stmt = stmt.where(api_keys.c.account_id == account_id)
        with translated(self._engine.url):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(stmt)).mappings().all()
        return [ApiKeyRecord(**row) for row in rows]


def _check_cap(value: int | None, param: str) -> None:
    if value is None:
        return
    if type(value) is not int or not 0 <= value <= MAX_CAP:
        raise InvalidRequest(
            f"{param} must be a non-negative integer of base units, or null for no cap",
            param=param,
        )


def _check_limits(limits: KeyLimits) -> None:
    for param in ("max_concurrent_requests", "requests_per_minute"):
        value = getattr(limits, param)
        if value is not None and (type(value) is not int or not 0 <= value <= MAX_LIMIT):
            raise InvalidRequest(
                f"{param} must be an integer from 0 to {MAX_LIMIT}, or null for the "
                "gateway's default",
                param=param,
            )
    value = limits.tokens_per_minute
    if value is not None and (type(value) is not int or not 0 <= value <= MAX_CAP):
        raise InvalidRequest(
            "tokens_per_minute must be a non-negative integer, or null for the gateway's default",
            param="tokens_per_minute",
        )


def _aware(value: datetime | None) -> datetime | None:
    """func.max bypasses the column type: SQLite hands back naive UTC (or its text)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _row(record: ApiKeyRecord) -> dict[str, Any]:
    return {field: getattr(record, field) for field in ApiKeyRecord.__dataclass_fields__}
