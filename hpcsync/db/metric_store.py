"""Metric points, log cursors and run usage, written on a connection inside `Repository.atomic()`.

Points are keyed (run_id, name, step); writing a key again replaces its value and timestamp, so
the newer value wins (a job restarted from a checkpoint repeats steps, and a file re-read after
a crash writes the same keys). Non-finite values are dropped: SQLite cannot store NaN.

SQLite gets one `executemany` of `INSERT .. ON CONFLICT DO UPDATE` on the driver (about 250k
rows/s here, against 150k through SQLAlchemy's parameter handling). PostgreSQL gets a binary
COPY into a session-temporary table and one `INSERT .. SELECT .. ON CONFLICT DO UPDATE`
(about 140k rows/s here; psycopg 3 executemany reached 85k and SQLAlchemy's executemany 63k).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Float, bindparam, case, cast, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from hpcsync.db.tables import log_cursors, metrics, run_gpus, runs
from hpcsync.models import MetricPoint

_SQLITE_UPSERT = (
    "INSERT INTO metrics (run_id, name, step, value, timestamp) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (run_id, name, step) DO UPDATE "
    "SET value = excluded.value, timestamp = excluded.timestamp"
)
_PG_STAGE = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS hpcsync_metrics_stage "
    "(run_id integer, name varchar(255), step bigint, value double precision, "
    "timestamp timestamptz) ON COMMIT DELETE ROWS"
)
_PG_COPY = (
    "COPY hpcsync_metrics_stage (run_id, name, step, value, timestamp) FROM STDIN (FORMAT BINARY)"
)
_PG_TYPES = ["int4", "varchar", "int8", "float8", "timestamptz"]
_PG_UPSERT = (
    "INSERT INTO metrics (run_id, name, step, value, timestamp) "
    "SELECT run_id, name, step, value, timestamp FROM hpcsync_metrics_stage "
    "ON CONFLICT (run_id, name, step) DO UPDATE "
    "SET value = excluded.value, timestamp = excluded.timestamp"
)
# Below this many rows, COPY's extra round trips cost more than they save.
_PG_COPY_MIN_ROWS = 64


@dataclass(frozen=True, slots=True)
class CursorRow:
    """A stored read position in one file of one run, with the state that goes with it."""

    run_id: int
    path: str
    device: int | None = None
    inode: int | None = None
    offset: int = 0
    fingerprint: str | None = None
    skipping: bool = False
    skipped_lines: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    """Next step per metric name, for values printed without a step."""
    parser_state: str | None = None
    """The parser's own state at `offset`, as opaque JSON text."""


Row = tuple[str, int, float, datetime]
"""A point as (name, step, value, timezone-aware timestamp)."""


def upsert_metrics(connection: Connection, run_id: int, points: Iterable[MetricPoint]) -> int:
    """Insert or replace the points of one run (the last of a repeated key wins); return rows sent."""
    return upsert_rows(connection, run_id, [(p.name, p.step, p.value, p.timestamp) for p in points])


def upsert_rows(connection: Connection, run_id: int, rows: Sequence[Row]) -> int:
    """Insert or replace (name, step, value, timestamp) rows of one run; return rows sent."""
    if connection.dialect.name == "sqlite":
        return _sqlite_upsert(connection, run_id, rows)
    latest = {(row[0], row[1]): row for row in rows if math.isfinite(row[2])}
    if len(latest) >= _PG_COPY_MIN_ROWS:
        _copy_upsert(connection, run_id, latest.values())
    elif latest:
        _executemany_upsert(connection, run_id, latest.values())
    return len(latest)


def _sqlite_upsert(connection: Connection, run_id: int, rows: Sequence[Row]) -> int:
    # Executed in order, so a repeated key ends with its last value, as on PostgreSQL.
    to_db = metrics.c.timestamp.type.bind_processor(connection.dialect)
    assert to_db is not None
    stored = _SqliteTimes(to_db)
    isfinite = math.isfinite
    params = [
        (run_id, name, step, value, stored[moment])
        for name, step, value, moment in rows
        if isfinite(value)
    ]
    if params:
        connection.exec_driver_sql(_SQLITE_UPSERT, params)
    return len(params)


class _SqliteTimes(dict[datetime, Any]):
    """Each timestamp of a batch as the text SQLite stores, converted once per distinct value.

    The column's bind processor gives a naive UTC datetime, which sqlite3's default adapter
    would turn into `isoformat(" ")` row by row; converting here once per distinct time gives
    the same text (about a third of the insert time for a million rows).
    """

    def __init__(self, to_db: Callable[[Any], Any]) -> None:
        super().__init__()
        self.to_db = to_db

    def __missing__(self, moment: datetime) -> Any:
        value = self.to_db(moment)
        text = self[moment] = value.isoformat(" ") if isinstance(value, datetime) else value
        return text


def _executemany_upsert(connection: Connection, run_id: int, rows: Iterable[Row]) -> None:
    statement = postgresql.insert(metrics)
    statement = statement.on_conflict_do_update(
        index_elements=[metrics.c.run_id, metrics.c.name, metrics.c.step],
        set_={"value": statement.excluded.value, "timestamp": statement.excluded.timestamp},
    )
    params = [
        {"run_id": run_id, "name": name, "step": step, "value": value, "timestamp": moment}
        for name, step, value, moment in rows
    ]
    connection.execute(statement, params)


def _copy_upsert(connection: Connection, run_id: int, rows: Iterable[Row]) -> None:
    driver: Any = connection.connection.driver_connection
    with driver.cursor() as cursor:
        cursor.execute(_PG_STAGE)
        with cursor.copy(_PG_COPY) as copy:
            copy.set_types(_PG_TYPES)
            for name, step, value, moment in rows:
                copy.write_row((run_id, name, step, value, _aware(moment)))
        cursor.execute(_PG_UPSERT)
        # The stage empties at commit; empty it now too, in case a caller writes twice.
        cursor.execute("TRUNCATE hpcsync_metrics_stage")


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r} cannot be stored; give it a zone")
    return moment


def load_metrics(connection: Connection, run_id: int, name: str | None = None) -> list[MetricPoint]:
    """Return a run's points (of one name, if given), ordered by name and step."""
    query = select(metrics.c.name, metrics.c.step, metrics.c.value, metrics.c.timestamp).where(
        metrics.c.run_id == run_id
    )
    if name is not None:
        query = query.where(metrics.c.name == name)
    query = query.order_by(metrics.c.name, metrics.c.step)
    return [
        MetricPoint(name=row.name, step=row.step, value=row.value, timestamp=row.timestamp)
        for row in connection.execute(query)
    ]


def load_cursors(
    connection: Connection, run_ids: Sequence[int]
) -> dict[tuple[int, str], CursorRow]:
    """Return the stored cursors of these runs, keyed (run_id, path)."""
    found: dict[tuple[int, str], CursorRow] = {}
    ids = sorted(set(run_ids))
    for start in range(0, len(ids), 500):
        query = select(log_cursors).where(log_cursors.c.run_id.in_(ids[start : start + 500]))
        for row in connection.execute(query).mappings():
            cursor = CursorRow(
                run_id=row["run_id"],
                path=row["path"],
                device=row["device"],
                inode=row["inode"],
                offset=row["byte_offset"],
                fingerprint=row["fingerprint"],
                skipping=bool(row["skipping"]),
                skipped_lines=row["skipped_lines"],
                counters={str(k): int(v) for k, v in json.loads(row["counters"] or "{}").items()},
                parser_state=row["parser_state"],
            )
            found[(cursor.run_id, cursor.path)] = cursor
    return found


def save_cursor(connection: Connection, cursor: CursorRow, now: datetime) -> None:
    """Insert or replace the stored cursor of (run_id, path)."""
    values: dict[str, Any] = {
        "run_id": cursor.run_id,
        "path": cursor.path,
        "device": cursor.device,
        "inode": cursor.inode,
        "byte_offset": cursor.offset,
        "fingerprint": cursor.fingerprint,
        "skipping": cursor.skipping,
        "skipped_lines": cursor.skipped_lines,
        "counters": json.dumps(cursor.counters, sort_keys=True, separators=(",", ":")),
        "parser_state": cursor.parser_state,
        "updated_at": now,
    }
    dialect_insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    statement = dialect_insert(log_cursors).values(values)
    statement = statement.on_conflict_do_update(
        index_elements=[log_cursors.c.run_id, log_cursors.c.path],
        set_={key: statement.excluded[key] for key in values if key not in ("run_id", "path")},
    )
    connection.execute(statement)


@dataclass(frozen=True, slots=True)
class RunGpu:
    """A physical GPU a run had on one node, as its sample file's header line names it."""

    node: str
    i: int
    """The GPU's index within the job: the `{i}` of `system/gpu_{i}_*`."""
    minor: int | None
    uuid: str
    name: str
    driver: str | None
    seen_at: datetime


@dataclass(frozen=True, slots=True)
class LiveUsageRow:
    """A running run's usage so far: its largest RSS and CPU efficiency (None: not known)."""

    run_id: int
    max_rss_mb: float | None
    cpu_efficiency: float | None


def upsert_run_gpus(connection: Connection, run_id: int, gpus: Sequence[RunGpu]) -> int:
    """Insert or update a run's GPUs, keyed (run_id, node, uuid); return rows sent."""
    latest = {(gpu.node, gpu.uuid): gpu for gpu in gpus}
    if not latest:
        return 0
    dialect_insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    statement = dialect_insert(run_gpus)
    statement = statement.on_conflict_do_update(
        index_elements=[run_gpus.c.run_id, run_gpus.c.node, run_gpus.c.uuid],
        set_={key: statement.excluded[key] for key in ("i", "minor", "name", "driver", "seen_at")},
    )
    params = [
        {
            "run_id": run_id,
            "node": gpu.node,
            "i": gpu.i,
            "minor": gpu.minor,
            "uuid": gpu.uuid,
            "name": gpu.name,
            "driver": gpu.driver,
            "seen_at": gpu.seen_at,
        }
        for gpu in latest.values()
    ]
    connection.execute(statement, params)
    return len(params)


def load_run_gpus(connection: Connection, run_id: int) -> list[RunGpu]:
    """Return a run's GPUs ordered by node and `i`."""
    query = (
        select(run_gpus)
        .where(run_gpus.c.run_id == run_id)
        .order_by(run_gpus.c.node, run_gpus.c.i, run_gpus.c.uuid)
    )
    return [
        RunGpu(
            node=row.node,
            i=row.i,
            minor=row.minor,
            uuid=row.uuid,
            name=row.name,
            driver=row.driver,
            seen_at=row.seen_at,
        )
        for row in connection.execute(query)
    ]


def gpu_util_mean(connection: Connection, run_id: int) -> float | None:
    """Return the mean of a run's `system/gpu_{i}_utilization_percentage` points; None if none.

    Every point is one GPU's average over one sampling interval, and each counts once: the
    mean over all GPUs and all intervals. With every GPU reporting every interval this is the
    time average of the per-interval mean across GPUs, so one idle GPU beside one busy one
    gives 50. The names come from the run's `run_gpus` rows (which the sampler writes before
    any sample), so the query stays on the metrics index.
    """
    indices = connection.execute(
        select(run_gpus.c.i).where(run_gpus.c.run_id == run_id).distinct()
    ).scalars()
    names = [f"system/gpu_{i}_utilization_percentage" for i in indices]
    if not names:
        return None
    value = connection.execute(
        select(func.avg(metrics.c.value)).where(
            metrics.c.run_id == run_id, metrics.c.name.in_(names)
        )
    ).scalar_one_or_none()
    return None if value is None else float(value)


def set_gpu_util_mean(connection: Connection, run_id: int, value: float | None) -> None:
    """Store a run's `gpu_util_mean`; None leaves the stored value as it is."""
    if value is not None:
        connection.execute(update(runs).where(runs.c.id == run_id).values(gpu_util_mean=value))


def update_live_usage(connection: Connection, usage: Sequence[LiveUsageRow]) -> int:
    """Write running runs' `max_rss_mb` (never lowered) and `cpu_efficiency`; return rows sent.

    Runs already final are left alone: their values come from accounting. A None keeps the
    stored value.
    """
    if not usage:
        return 0
    rss = cast(bindparam("rss", type_=Float), Float)
    efficiency = cast(bindparam("efficiency", type_=Float), Float)
    statement = (
        update(runs)
        .where(runs.c.id == bindparam("run"), runs.c.final.is_(False))
        .values(
            max_rss_mb=case(
                (rss.is_(None), runs.c.max_rss_mb),
                (runs.c.max_rss_mb.is_(None) | (runs.c.max_rss_mb < rss), rss),
                else_=runs.c.max_rss_mb,
            ),
            cpu_efficiency=func.coalesce(efficiency, runs.c.cpu_efficiency),
        )
    )
    params = [
        {"run": row.run_id, "rss": row.max_rss_mb, "efficiency": row.cpu_efficiency}
        for row in usage
    ]
    connection.execute(statement, params)
    return len(params)
