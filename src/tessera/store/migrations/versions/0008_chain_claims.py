"""Slashes decided against on-chain stake, kept until the StakeManager has them.

Revision ID: 0008
Revises: 0007
Created: 2026-12-06

Self-contained like the earlier revisions. When the audits (or the SLA) slash a provider
whose stake is on chain, the gateway records the claim here before it proposes it, so a
gateway killed in between proposes it after its restart; ``status`` is ``queued`` until
the proposal is mined (``proposed``, with its id) or the StakeManager refuses it
(``refused``, with the reason).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "chain_claims",
        sa.Column("reference", sa.String(200), nullable=False),
        sa.Column("provider_id", sa.String(64), nullable=False),
        sa.Column("offender", sa.String(42), nullable=False),
        sa.Column("kind", sa.Integer(), nullable=False),
        sa.Column("evidence", sa.String(66), nullable=False),
        sa.Column("refunds", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("proposal_id", sa.BigInteger(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("reference", name=op.f("pk_chain_claims")),
    )
    op.create_index("ix_chain_claims_status", "chain_claims", ["status"])


def downgrade() -> None:
    op.drop_index("ix_chain_claims_status", table_name="chain_claims")
    op.drop_table("chain_claims")
