"""Alembic environment: runs on the connection hpcsync hands over in config.attributes."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from hpcsync.db.tables import metadata


def run_migrations(connection: Connection) -> None:
    """Apply migrations on an open connection."""
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("hpcsync migrations run through `hpcsync db upgrade`, not the alembic CLI")
run_migrations(connection)
