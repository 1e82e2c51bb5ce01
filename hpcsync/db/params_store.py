"""Run parameters and seeds, written on a connection inside `Repository.atomic()`.

A run's params are what its run manifest says, as a whole: storing a manifest upserts its
params keyed (run_id, key) and deletes the run's other params, and storing the same manifest
again writes nothing. Only keys whose value changed are sent.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import Connection, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from hpcsync.db.tables import run_params, runs


def load_params(connection: Connection, run_id: int) -> dict[str, str]:
    """Return a run's params, ordered by key."""
    query = (
        select(run_params.c.key, run_params.c.value)
        .where(run_params.c.run_id == run_id)
        .order_by(run_params.c.key)
    )
    return {row.key: row.value for row in connection.execute(query)}


def replace_params(connection: Connection, run_id: int, params: Mapping[str, str]) -> int:
    """Make a run's params exactly `params`; return how many rows were written or deleted."""
    stored = load_params(connection, run_id)
    changed = {key: value for key, value in params.items() if stored.get(key) != value}
    gone = sorted(stored.keys() - params.keys())
    if gone:
        connection.execute(
            delete(run_params).where(run_params.c.run_id == run_id, run_params.c.key.in_(gone))
        )
    if changed:
        dialect_insert = (
            postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
        )
        statement = dialect_insert(run_params)
        statement = statement.on_conflict_do_update(
            index_elements=[run_params.c.run_id, run_params.c.key],
            set_={"value": statement.excluded.value},
        )
        connection.execute(
            statement,
            [{"run_id": run_id, "key": key, "value": value} for key, value in changed.items()],
        )
    return len(changed) + len(gone)


def set_seed(connection: Connection, run_id: int, seed: int | None) -> None:
    """Store a run's `seed`; None leaves the stored value as it is."""
    if seed is not None:
        connection.execute(update(runs).where(runs.c.id == run_id).values(seed=seed))
