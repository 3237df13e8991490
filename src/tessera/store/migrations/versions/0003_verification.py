"""Verification: receipts, audits, audit cases, provider bans, violations, reputation.

Revision ID: 0003
Revises: 0002
Created: 2025-01-03

Self-contained like 0001 and 0002: later edits to tables.py must not change what this
revision builds. Only new tables, so no batch mode is needed and downgrading drops them.
Audit and violation ids are BIGINT on PostgreSQL and INTEGER on SQLite, where only an
``INTEGER PRIMARY KEY`` is assigned automatically.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _serial_id() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "receipts",
        sa.Column("request_id", sa.String(100), nullable=False),
        sa.Column("job_id", sa.String(100), nullable=False),
        sa.Column("provider_id", sa.String(64), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("weights_sha256", sa.String(64), nullable=False),
        sa.Column("account_id", sa.String(40), nullable=False),
        sa.Column("body_json", sa.Text(), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("request_id", name="pk_receipts"),
    )
    op.create_index("ix_receipts_provider_id", "receipts", ["provider_id"])
    op.create_index("ix_receipts_account_id", "receipts", ["account_id"])

    op.create_table(
        "audits",
        sa.Column("id", _serial_id(), autoincrement=True, nullable=False),
        sa.Column("request_id", sa.String(100), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("provider_id", sa.String(64), nullable=False),
        sa.Column("auditor_id", sa.String(64), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("evidence_json", sa.Text(), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audits"),
        sa.CheckConstraint("round BETWEEN 1 AND 3", name=op.f("ck_audits_round_range")),
        sa.CheckConstraint(
            "outcome IN ('passed', 'failed', 'no_answer')", name=op.f("ck_audits_known_outcome")
        ),
    )
    op.create_index("ix_audits_request_id_id", "audits", ["request_id", "id"])
    op.create_index("ix_audits_provider_id_id", "audits", ["provider_id", "id"])

    op.create_table(
        "audit_cases",
        sa.Column("request_id", sa.String(100), nullable=False),
        sa.Column("provider_id", sa.String(64), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("slashed_units", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("refunded_units", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("opened_at", _utc(), nullable=False),
        sa.Column("closed_at", _utc(), nullable=True),
        sa.PrimaryKeyConstraint("request_id", name="pk_audit_cases"),
        sa.CheckConstraint(
            "status IN ('passed', 'open', 'upheld', 'cleared', 'inconclusive')",
            name=op.f("ck_audit_cases_known_status"),
        ),
        sa.CheckConstraint(
            "slashed_units >= 0 AND refunded_units >= 0",
            name=op.f("ck_audit_cases_non_negative_money"),
        ),
    )
    op.create_index(
        "ix_audit_cases_provider_id_opened_at", "audit_cases", ["provider_id", "opened_at"]
    )
    op.create_index("ix_audit_cases_status_opened_at", "audit_cases", ["status", "opened_at"])

    op.create_table(
        "provider_bans",
        sa.Column("provider_id", sa.String(64), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("provider_id", "model", name="pk_provider_bans"),
    )

    op.create_table(
        "violations",
        sa.Column("id", _serial_id(), autoincrement=True, nullable=False),
        sa.Column("provider_id", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(100), nullable=True),
        sa.Column("kind", sa.String(50), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_violations"),
    )
    op.create_index("ix_violations_provider_id_id", "violations", ["provider_id", "id"])

    op.create_table(
        "provider_reputation",
        sa.Column("provider_id", sa.String(64), nullable=False),
        sa.Column("stats_json", sa.Text(), nullable=False),
        sa.Column("updated_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("provider_id", name="pk_provider_reputation"),
    )


def downgrade() -> None:
    op.drop_table("provider_reputation")
    op.drop_table("violations")
    op.drop_table("provider_bans")
    op.drop_table("audit_cases")
    op.drop_table("audits")
    op.drop_table("receipts")
