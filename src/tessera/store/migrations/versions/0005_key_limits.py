"""Key limits and the key-change signal: per-key rate/concurrency overrides, ``changed_at``.

Revision ID: 0005
Revises: 0004
Created: 2025-01-05

Self-contained like the earlier revisions. Three nullable override columns (NULL: the
gateway's default applies) and ``changed_at``, the time of the key's last change (create,
revoke, caps, policy, limits). Running gateways poll the index on ``changed_at`` to evict
changed keys from their auth caches, so a revoke made in another process takes effect
within a fraction of a second. Existing keys get ``changed_at = created_at``; the column
is then made NOT NULL through batch mode (SQLite copies the table for that).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("max_concurrent_requests", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("requests_per_minute", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("tokens_per_minute", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("changed_at", _utc(), nullable=True))
    op.execute("UPDATE api_keys SET changed_at = created_at")
    with op.batch_alter_table("api_keys") as batch:
        batch.alter_column("changed_at", existing_type=_utc(), nullable=False)
        batch.create_check_constraint(
            op.f("ck_api_keys_non_negative_limits"),
            "(max_concurrent_requests IS NULL OR max_concurrent_requests >= 0) "
            "AND (requests_per_minute IS NULL OR requests_per_minute >= 0) "
            "AND (tokens_per_minute IS NULL OR tokens_per_minute >= 0)",
        )
        batch.create_index("ix_api_keys_changed_at", ["changed_at"])


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_index("ix_api_keys_changed_at")
        batch.drop_constraint(op.f("ck_api_keys_non_negative_limits"), type_="check")
        batch.drop_column("changed_at")
        batch.drop_column("tokens_per_minute")
        batch.drop_column("requests_per_minute")
        batch.drop_column("max_concurrent_requests")
