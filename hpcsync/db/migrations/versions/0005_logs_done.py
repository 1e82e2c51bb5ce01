"""runs.logs_done: an ended run's last log read has committed

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Runs that ended before this column existed had their last read already.
    with op.batch_alter_table("runs") as batch:
        batch.add_column(
            sa.Column("logs_done", sa.Boolean(), server_default=sa.true(), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("logs_done")
