"""Create the byte store table with its lifetime columns.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cachedvec_entries",
        # "C" collation on PostgreSQL: byte order, like SQLite's BINARY, so
        # prefix range scans use the primary key index.
        sa.Column(
            "key",
            sa.Text().with_variant(sa.Text(collation="C"), "postgresql"),
            nullable=False,
        ),
        sa.Column("value", sa.LargeBinary(), nullable=False),
        # Unix seconds of the last write and the last recorded read.
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("accessed_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_cachedvec_entries"),
    )


def downgrade() -> None:
    op.drop_table("cachedvec_entries")
