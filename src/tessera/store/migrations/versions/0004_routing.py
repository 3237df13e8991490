"""Routing and liveness: an API key's default routing policy, uptime per epoch.

Revision ID: 0004
Revises: 0003
Created: 2025-01-04

Self-contained like the earlier revisions. ``api_keys.policy_json`` is a nullable column,
which SQLite can add in place, so no batch mode is needed.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    # The key's routing policy (the request's ``provider`` object shape) as JSON; a
    # request may narrow it, never widen it. NULL: no default policy.
    op.add_column("api_keys", sa.Column("policy_json", sa.Text(), nullable=True))

    op.create_table(
        "provider_uptime",
        sa.Column("provider_id", sa.String(64), nullable=False),
        sa.Column("epoch_start", _utc(), nullable=False),
        sa.Column("epoch_s", sa.Integer(), nullable=False),
        sa.Column("up_ms", sa.BigInteger(), nullable=False),
        sa.Column("down_ms", sa.BigInteger(), nullable=False),
        sa.Column("sla_uptime_bps", sa.Integer(), nullable=False),
        sa.Column("slashed", sa.BigInteger(), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("provider_id", "epoch_start", name="pk_provider_uptime"),
        sa.CheckConstraint(
            "up_ms >= 0 AND down_ms >= 0 AND slashed >= 0 "
            "AND sla_uptime_bps >= 0 AND sla_uptime_bps <= 10000 AND epoch_s > 0",
            name=op.f("ck_provider_uptime_sane"),
        ),
    )
    op.create_index("ix_provider_uptime_epoch_start", "provider_uptime", ["epoch_start"])


def downgrade() -> None:
    op.drop_table("provider_uptime")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("policy_json")
