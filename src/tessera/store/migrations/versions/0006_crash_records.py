"""What a crash must not forget: uptime epochs in progress, and requests in flight.

Revision ID: 0006
Revises: 0005
Created: 2025-01-06

Self-contained like the earlier revisions. ``provider_uptime_progress`` holds each tracked
provider's accrued time in the epochs not yet closed, so a restarted gateway resumes them
instead of forgetting the downtime it saw. A partial index on ``requests.status`` finds the
rows of requests still running (status ``in_flight``), which the next start marks
``interrupted``; it stays tiny because a request's row leaves the index when it finishes.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

IN_FLIGHT = sa.text("status = 'in_flight'")


def upgrade() -> None:
    op.create_table(
        "provider_uptime_progress",
        sa.Column("provider_id", sa.String(64), nullable=False),
        sa.Column("epoch_s", sa.Integer(), nullable=False),
        sa.Column("committed", sa.Boolean(), nullable=False),
        sa.Column("sla_uptime_bps", sa.Integer(), nullable=False),
        sa.Column("tallies", sa.Text(), nullable=False),
        sa.Column("saved_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "sla_uptime_bps >= 0 AND sla_uptime_bps <= 10000 AND epoch_s > 0",
            name=op.f("ck_provider_uptime_progress_sane"),
        ),
        sa.PrimaryKeyConstraint("provider_id", name=op.f("pk_provider_uptime_progress")),
    )
    op.create_index(
        "ix_requests_status",
        "requests",
        ["status"],
        postgresql_where=IN_FLIGHT,
        sqlite_where=IN_FLIGHT,
    )


def downgrade() -> None:
    op.drop_index("ix_requests_status", table_name="requests")
    op.drop_table("provider_uptime_progress")
