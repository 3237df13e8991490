"""The chain: which account each Ethereum address pays for, where each provider is paid,
and how far the vault's events are booked.

Revision ID: 0007
Revises: 0006
Created: 2026-12-06

Self-contained like the earlier revisions. ``chain_links`` maps a consumer's proven address
to their account; ``chain_payees`` each provider's bound payout address; ``chain_cursor`` keeps, per gateway address, the last finalized block
whose events are all in the journal, so a restarted gateway resumes where it stopped.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "chain_links",
        sa.Column("address", sa.String(42), nullable=False),
        sa.Column("account_id", sa.String(40), nullable=False),
        sa.Column("linked_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("address", name=op.f("pk_chain_links")),
    )
    op.create_index("ix_chain_links_account_id", "chain_links", ["account_id"])
    op.create_table(
        "chain_payees",
        sa.Column("provider_id", sa.String(64), nullable=False),
        sa.Column("address", sa.String(42), nullable=False),
        sa.Column("nonce", sa.BigInteger(), nullable=False),
        sa.Column("valid_until", sa.BigInteger(), nullable=False),
        sa.Column("bound_at_block", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("provider_id", name=op.f("pk_chain_payees")),
    )
    op.create_table(
        "chain_cursor",
        sa.Column("gateway", sa.String(42), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", sa.String(66), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("gateway", name=op.f("pk_chain_cursor")),
    )


def downgrade() -> None:
    op.drop_table("chain_cursor")
    op.drop_table("chain_payees")
    op.drop_index("ix_chain_links_account_id", table_name="chain_links")
    op.drop_table("chain_links")
