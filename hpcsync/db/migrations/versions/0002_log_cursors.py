"""log cursors

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "log_cursors",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("device", sa.BigInteger(), nullable=True),
        sa.Column("inode", sa.BigInteger(), nullable=True),
        sa.Column("byte_offset", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=True),
        sa.Column("skipping", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("skipped_lines", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("counters", sa.Text(), server_default="{}", nullable=False),
        sa.Column("parser_state", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_log_cursors_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_log_cursors")),
        sa.UniqueConstraint("run_id", "path", name=op.f("uq_log_cursors_run_id_path")),
    )


def downgrade() -> None:
    op.drop_table("log_cursors")
