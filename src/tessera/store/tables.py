"""The schema, as SQLAlchemy Core tables. Migrations in ``migrations/versions`` build exactly this.

Times are timezone-aware UTC everywhere (:class:`UtcDateTime`); counts are integers and
money is BigInteger base units (never floats). A test checks that the migrated database
and this metadata never drift apart.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
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


# Who pays: every API key spends from exactly one account; one account may hold many keys.
accounts = Table(
    "accounts",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("key_hash", String(64), nullable=False),
    Column("prefix", String(16), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("revoked_at", UtcDateTime(), nullable=True),
    Column("account_id", String(40), ForeignKey("accounts.id"), nullable=False),
    # Base units; NULL means no cap.
    Column("spend_cap_total", BigInteger(), nullable=True),
    Column("spend_cap_daily", BigInteger(), nullable=True),
    # Default routing policy (the request's ``provider`` object) as JSON; NULL: none.
    Column("policy_json", Text(), nullable=True),
    # Per-key overrides of the gateway's default limits; NULL: the default applies.
    Column("max_concurrent_requests", Integer(), nullable=True),
    Column("requests_per_minute", Integer(), nullable=True),
    Column("tokens_per_minute", BigInteger(), nullable=True),
    # Last change (create, revoke, caps, policy, limits): gateways poll this index to
    # evict changed keys from their auth caches.
    Column("changed_at", UtcDateTime(), nullable=False),
    CheckConstraint(
        "(spend_cap_total IS NULL OR spend_cap_total >= 0) "
        "AND (spend_cap_daily IS NULL OR spend_cap_daily >= 0)",
        name="non_negative_caps",
    ),
    CheckConstraint(
        "(max_concurrent_requests IS NULL OR max_concurrent_requests >= 0) "
        "AND (requests_per_minute IS NULL OR requests_per_minute >= 0) "
        "AND (tokens_per_minute IS NULL OR tokens_per_minute >= 0)",
        name="non_negative_limits",
    ),
    Index(None, "key_hash", unique=True),
    Index(None, "account_id"),
    Index(None, "changed_at"),
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
    Column("account_id", String(40), nullable=True),
    # What the request cost in base units, and the prices (per million tokens) it paid.
    Column("cost", BigInteger(), nullable=False, server_default=text("0")),
    Column("price_input_per_mtok", BigInteger(), nullable=True),
    Column("price_output_per_mtok", BigInteger(), nullable=True),
    CheckConstraint(
        "prompt_tokens >= 0 AND completion_tokens >= 0 AND latency_ms >= 0 "
        "AND (ttft_ms IS NULL OR ttft_ms >= 0)",
        name="non_negative",
    ),
    CheckConstraint(
        "cost >= 0 AND (price_input_per_mtok IS NULL OR price_input_per_mtok >= 0) "
        "AND (price_output_per_mtok IS NULL OR price_output_per_mtok >= 0)",
        name="non_negative_money",
    ),
    Index(None, "api_key_id", "created_at"),
    Index(None, "provider_id", "created_at"),
    Index(None, "account_id", "created_at"),
    # The rows of requests still running (a crash leaves them; the next start marks them).
    Index(
        None,
        "status",
        postgresql_where=text("status = 'in_flight'"),
        sqlite_where=text("status = 'in_flight'"),
    ),
)

# The ledger journal (see tessera.ledger.journal): append-only, ids assigned by the one
# gateway that writes it, 1, 2, 3, ... without gaps. ``at`` is epoch seconds as a double,
# which round-trips a Python float exactly. The unique (reference, kind) index both refuses
# a second capture of one request and serves lookups by reference.
ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column("entry_id", BigInteger(), primary_key=True, autoincrement=False),
    Column("kind", String(32), nullable=False),
    Column("reference", String(200), nullable=False),
    Column("at", Double(), nullable=False),
    Column("memo", Text(), nullable=False),  # JSON object of str -> str, sorted keys
    Index(None, "reference", "kind", unique=True),
)

ledger_postings = Table(
    "ledger_postings",
    metadata,
    Column(
        "entry_id",
        BigInteger(),
        ForeignKey("ledger_entries.entry_id"),
        primary_key=True,
        autoincrement=False,
    ),
    Column("account", String(120), primary_key=True),  # str(Account), e.g. "balance:acct_..."
    Column("amount", BigInteger(), nullable=False),
    CheckConstraint("amount <> 0", name="non_zero"),
    Index(None, "account", "entry_id"),
)

# Balances derived from the postings, kept in the same transaction as each append so a
# balance is one indexed read; ``LedgerStore.check`` rebuilds them to prove they agree.
ledger_balances = Table(
    "ledger_balances",
    metadata,
    Column("account", String(120), primary_key=True),
    Column("balance", BigInteger(), nullable=False),
    Column("last_entry_id", BigInteger(), nullable=False),
)

# Verifiable work (see tessera.store.verification). Like the request log these tables carry
# no foreign keys: receipts are written in batches off the hot path, and audits, cases and
# violations refer to requests and providers whose rows may lag behind or never exist.

# Audit and violation ids: BIGINT on PostgreSQL, but INTEGER on SQLite, where only an
# ``INTEGER PRIMARY KEY`` is the auto-assigned rowid (a BIGINT key would stay NULL).
_SerialId = BigInteger().with_variant(Integer(), "sqlite")

# One countersigned receipt per request; only the paying account may read it.
receipts = Table(
    "receipts",
    metadata,
    Column("request_id", String(100), primary_key=True),
    Column("job_id", String(100), nullable=False),
    Column("provider_id", String(64), nullable=False),
    Column("model", String(200), nullable=False),
    Column("weights_sha256", String(64), nullable=False),
    Column("account_id", String(40), nullable=False),
    Column("body_json", Text(), nullable=False),  # tessera.protocol.receipts.CountersignedReceipt
    Column("created_at", UtcDateTime(), nullable=False),
    Index(None, "provider_id"),
    Index(None, "account_id"),
)

# One row per audit round; (provider_id, id) and (request_id, id) serve newest-first pages.
audits = Table(
    "audits",
    metadata,
    Column("id", _SerialId, primary_key=True, autoincrement=True),
    Column("request_id", String(100), nullable=False),
    Column("round", Integer(), nullable=False),
    Column("provider_id", String(64), nullable=False),
    Column("auditor_id", String(64), nullable=False),
    Column("model", String(200), nullable=False),
    Column("outcome", String(20), nullable=False),
    Column("reason", Text(), nullable=True),
    Column("evidence_json", Text(), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    CheckConstraint("round BETWEEN 1 AND 3", name="round_range"),
    CheckConstraint("outcome IN ('passed', 'failed', 'no_answer')", name="known_outcome"),
    Index(None, "request_id", "id"),
    Index(None, "provider_id", "id"),
)

# Where an audited request stands: one row per request, overwritten as rounds conclude.
audit_cases = Table(
    "audit_cases",
    metadata,
    Column("request_id", String(100), primary_key=True),
    Column("provider_id", String(64), nullable=False),
    Column("model", String(200), nullable=False),
    Column("status", String(20), nullable=False),
    Column("reason", Text(), nullable=True),
    # Base units taken from the provider's stake and paid back to the consumer.
    Column("slashed_units", BigInteger(), nullable=False, server_default=text("0")),
    Column("refunded_units", BigInteger(), nullable=False, server_default=text("0")),
    Column("opened_at", UtcDateTime(), nullable=False),
    Column("closed_at", UtcDateTime(), nullable=True),
    CheckConstraint(
        "status IN ('passed', 'open', 'upheld', 'cleared', 'inconclusive')",
        name="known_status",
    ),
    CheckConstraint("slashed_units >= 0 AND refunded_units >= 0", name="non_negative_money"),
    Index(None, "provider_id", "opened_at"),
    Index(None, "status", "opened_at"),
)

# A provider banned from serving one model; the composite key makes a second ban a no-op.
provider_bans = Table(
    "provider_bans",
    metadata,
    Column("provider_id", String(64), primary_key=True),
    Column("model", String(200), primary_key=True),
    Column("reason", Text(), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
)

violations = Table(
    "violations",
    metadata,
    Column("id", _SerialId, primary_key=True, autoincrement=True),
    Column("provider_id", String(64), nullable=False),
    Column("request_id", String(100), nullable=True),
    Column("kind", String(50), nullable=False),
    Column("detail", Text(), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Index(None, "provider_id", "id"),
)

# The reputation counters of each provider (tessera.verify), saved now and then, loaded at start.
provider_reputation = Table(
    "provider_reputation",
    metadata,
    Column("provider_id", String(64), primary_key=True),
    Column("stats_json", Text(), nullable=False),  # JSON object of counter name -> number
    Column("updated_at", UtcDateTime(), nullable=False),
)


provider_uptime = Table(
    "provider_uptime",
    metadata,
    Column("provider_id", String(64), primary_key=True),
    Column("epoch_start", UtcDateTime(), primary_key=True),
    Column("epoch_s", Integer(), nullable=False),
    Column("up_ms", BigInteger(), nullable=False),
    Column("down_ms", BigInteger(), nullable=False),
    Column("sla_uptime_bps", Integer(), nullable=False),
    Column("slashed", BigInteger(), nullable=False),  # base units taken for this epoch
    Column("created_at", UtcDateTime(), nullable=False),
    CheckConstraint(
        "up_ms >= 0 AND down_ms >= 0 AND slashed >= 0 "
        "AND sla_uptime_bps >= 0 AND sla_uptime_bps <= 10000 AND epoch_s > 0",
        name="sane",
    ),
    Index(None, "epoch_start"),
)

# The epochs still open: each tracked provider's accrued time, saved every few seconds and
# on connection events, so a restarted gateway resumes them (gateway/liveness.py).
provider_uptime_progress = Table(
    "provider_uptime_progress",
    metadata,
    Column("provider_id", String(64), primary_key=True),
    Column("epoch_s", Integer(), nullable=False),
    Column("committed", Boolean(), nullable=False),
    Column("sla_uptime_bps", Integer(), nullable=False),
    # JSON list of [epoch_start_ms, up_ms, down_ms, sla_uptime_bps], oldest first.
    Column("tallies", Text(), nullable=False),
    Column("saved_at", UtcDateTime(), nullable=False),
    CheckConstraint("sla_uptime_bps >= 0 AND sla_uptime_bps <= 10000 AND epoch_s > 0", name="sane"),
)

# Which account an Ethereum address pays for: a consumer proves the address is theirs once
# (a signed message, gateway/chain_routes.py) and its deposits in the vault are credited to
# the account from then on. One account per address; an account may link several.
chain_links = Table(
    "chain_links",
    metadata,
    Column("address", String(42), primary_key=True),  # checksummed 0x...
    Column("account_id", String(40), nullable=False),
    Column("linked_at", UtcDateTime(), nullable=False),
    Index(None, "account_id"),
)

# Where each provider is paid: the Ethereum account its Ed25519 key bound itself to in the
# Registry (the newest binding whose signature checks), read from the chain's Bound events.
chain_payees = Table(
    "chain_payees",
    metadata,
    Column("provider_id", String(64), primary_key=True),
    Column("address", String(42), nullable=False),
    Column("nonce", BigInteger(), nullable=False),
    Column("valid_until", BigInteger(), nullable=False),
    Column("bound_at_block", BigInteger(), nullable=False),
)

# How far the chain watcher has booked the vault's events, per gateway address: the last
# finalized block whose events are all in the journal (gateway/chain_watcher.py).
chain_cursor = Table(
    "chain_cursor",
    metadata,
    Column("gateway", String(42), primary_key=True),
    Column("block_number", BigInteger(), nullable=False),
    Column("block_hash", String(66), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
)

# Slashes decided here against stake on chain, recorded before they are proposed to the
# StakeManager so a restart proposes what a crash left queued (gateway/chain_watcher.py).
chain_claims = Table(
    "chain_claims",
    metadata,
    Column("reference", String(200), primary_key=True),
    Column("provider_id", String(64), nullable=False),
    Column("offender", String(42), nullable=False),
    Column("kind", Integer(), nullable=False),
    Column("evidence", String(66), nullable=False),  # 0x keccak
    Column("refunds", Text(), nullable=False),  # JSON [[consumer, gateway, amount], ...]
    Column("status", String(16), nullable=False),  # queued, proposed, refused
    Column("proposal_id", BigInteger(), nullable=True),
    Column("detail", Text(), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Index(None, "status"),
)
