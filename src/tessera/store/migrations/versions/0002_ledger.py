"""Ledger: accounts, key spend caps, request costs, and the journal with its balances.

Revision ID: 0002
Revises: 0001
Created: 2025-01-02

Self-contained like 0001: later edits to tables.py must not change what this revision
builds. Every key that exists before it gets an account of its own, named after the key,
with an id derived from the key id (``acct_`` + the first 16 hex of its SHA-256), so
running it on two copies of a database gives the same ids. SQLite cannot add NOT NULL,
foreign keys or CHECKs to an existing table, so those changes go through batch mode,
which copies the table there (and is plain ALTER TABLE on PostgreSQL). Constraint names
are wrapped in ``op.f`` because Alembic applies the metadata's naming convention to
migrations too, and would otherwise prefix ``ck_<table>_`` a second time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def account_id_for_key(key_id: str) -> str:
    """The id of the account this migration makes for an existing key."""
    return "acct_" + hashlib.sha256(key_id.encode("utf-8")).hexdigest()[:16]


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_accounts"),
    )

    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("account_id", sa.String(40), nullable=True))
        batch.add_column(sa.Column("spend_cap_total", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("spend_cap_daily", sa.BigInteger(), nullable=True))
    _give_every_key_an_account()
    with op.batch_alter_table("api_keys") as batch:
        batch.alter_column("account_id", existing_type=sa.String(40), nullable=False)
        batch.create_foreign_key(
            "fk_api_keys_account_id_accounts", "accounts", ["account_id"], ["id"]
        )
        batch.create_check_constraint(
            op.f("ck_api_keys_non_negative_caps"),
            "(spend_cap_total IS NULL OR spend_cap_total >= 0) "
            "AND (spend_cap_daily IS NULL OR spend_cap_daily >= 0)",
        )
        batch.create_index("ix_api_keys_account_id", ["account_id"])

    with op.batch_alter_table("requests") as batch:
        batch.add_column(sa.Column("account_id", sa.String(40), nullable=True))
        batch.add_column(
            sa.Column("cost", sa.BigInteger(), nullable=False, server_default=sa.text("0"))
        )
        batch.add_column(sa.Column("price_input_per_mtok", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("price_output_per_mtok", sa.BigInteger(), nullable=True))
        batch.create_check_constraint(
            op.f("ck_requests_non_negative_money"),
            "cost >= 0 AND (price_input_per_mtok IS NULL OR price_input_per_mtok >= 0) "
            "AND (price_output_per_mtok IS NULL OR price_output_per_mtok >= 0)",
        )
        batch.create_index("ix_requests_account_id_created_at", ["account_id", "created_at"])

    op.create_table(
        "ledger_entries",
        sa.Column("entry_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("reference", sa.String(200), nullable=False),
        sa.Column("at", sa.Double(), nullable=False),
        sa.Column("memo", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("entry_id", name="pk_ledger_entries"),
    )
    op.create_index(
        "ix_ledger_entries_reference_kind", "ledger_entries", ["reference", "kind"], unique=True
    )

    op.create_table(
        "ledger_postings",
        sa.Column("entry_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("account", sa.String(120), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("entry_id", "account", name="pk_ledger_postings"),
        sa.ForeignKeyConstraint(
            ["entry_id"],
            ["ledger_entries.entry_id"],
            name="fk_ledger_postings_entry_id_ledger_entries",
        ),
        sa.CheckConstraint("amount <> 0", name=op.f("ck_ledger_postings_non_zero")),
    )
    op.create_index(
        "ix_ledger_postings_account_entry_id", "ledger_postings", ["account", "entry_id"]
    )

    op.create_table(
        "ledger_balances",
        sa.Column("account", sa.String(120), nullable=False),
        sa.Column("balance", sa.BigInteger(), nullable=False),
        sa.Column("last_entry_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("account", name="pk_ledger_balances"),
    )


def _give_every_key_an_account() -> None:
    """One account per existing key, named after it, created when the key was."""
    conn = op.get_bind()
    keys = sa.table(
        "api_keys",
        sa.column("id", sa.String()),
        sa.column("name", sa.String()),
        sa.column("created_at", _utc()),
        sa.column("account_id", sa.String()),
    )
    accounts = sa.table(
        "accounts",
        sa.column("id", sa.String()),
        sa.column("name", sa.String()),
        sa.column("created_at", _utc()),
    )
    rows = conn.execute(sa.select(keys.c.id, keys.c.name, keys.c.created_at)).all()
    if not rows:
        return
    conn.execute(
        sa.insert(accounts),
        [
            {"id": account_id_for_key(key_id), "name": name, "created_at": created_at}
            for key_id, name, created_at in rows
        ],
    )
    conn.execute(
        sa.update(keys)
        .where(keys.c.id == sa.bindparam("key_id"))
        .values(account_id=sa.bindparam("new_account_id")),
        [{"key_id": key_id, "new_account_id": account_id_for_key(key_id)} for key_id, *_ in rows],
    )


def downgrade() -> None:
    op.drop_table("ledger_balances")
    op.drop_table("ledger_postings")
    op.drop_table("ledger_entries")
    with op.batch_alter_table("requests") as batch:
        batch.drop_index("ix_requests_account_id_created_at")
        batch.drop_constraint(op.f("ck_requests_non_negative_money"), type_="check")
        batch.drop_column("price_output_per_mtok")
        batch.drop_column("price_input_per_mtok")
        batch.drop_column("cost")
        batch.drop_column("account_id")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_index("ix_api_keys_account_id")
        batch.drop_constraint(op.f("ck_api_keys_non_negative_caps"), type_="check")
        batch.drop_constraint("fk_api_keys_account_id_accounts", type_="foreignkey")
        batch.drop_column("spend_cap_daily")
        batch.drop_column("spend_cap_total")
        batch.drop_column("account_id")
    op.drop_table("accounts")
