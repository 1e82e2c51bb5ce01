"""The tracking database: engine set-up, transactions, and the queries and upserts hpcsync needs."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    RowMapping,
    create_engine,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import ConnectionPoolEntry

from hpcsync.db import schema
from hpcsync.db.queries import RunQueries, run_select
from hpcsync.db.tables import daemon_state, experiments, run_events, runs
from hpcsync.errors import ConfigError, StorageError
from hpcsync.models import Job, JobState, Run, RunEvent, RunStatus

log = logging.getLogger(__name__)


def masked_url(url: str) -> str:
    """Return the URL with any password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable database URL>"


def create_db_engine(url: str, connect_timeout: float = 10.0) -> Engine:
    """Return an engine for `url` (SQLite gets WAL and a busy timeout); raises ConfigError."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"database.url is not a valid SQLAlchemy URL: {masked_url(url)}") from exc
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        connect_args["timeout"] = 30.0
    elif parsed.get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = max(1, int(connect_timeout))
    try:
        engine = create_engine(parsed, connect_args=connect_args, pool_pre_ping=True)
    except (ArgumentError, ImportError) as exc:
        raise ConfigError(f"cannot use database {masked_url(url)}: {exc}") from exc
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


# Columns of `runs` that mirror Job fields one to one.
_JOB_COLUMNS = {
    "slurm_job_id": "job_id",
    "slurm_job_id_raw": "job_id_raw",
    "array_job_id": "array_job_id",
    "array_task_id": "array_task_id",
    "state_reason": "state_reason",
    "exit_code": "exit_code",
    "exit_signal": "exit_signal",
    "job_name": "name",
    "user_name": "user_name",
    "account": "account",
    "partition": "partition",
    "node_list": "node_list",
    "num_nodes": "num_nodes",
    "num_cpus": "num_cpus",
    "mem_mb": "mem_mb",
    "num_gpus": "num_gpus",
    "gpu_type": "gpu_type",
    "submitted_at": "submitted_at",
    "started_at": "started_at",
    "ended_at": "ended_at",
    "work_dir": "work_dir",
    "stdout_path": "stdout_path",
    "stderr_path": "stderr_path",
    "comment": "comment",
    "max_rss_mb": "max_rss_mb",
    "elapsed_seconds": "elapsed_seconds",
    "total_cpu_seconds": "total_cpu_seconds",
}


_KEEP_WHEN_MISSING = ("max_rss_mb", "cpu_efficiency", "elapsed_seconds", "total_cpu_seconds")


class Repository(RunQueries):
    """Reads and writes runs, experiments, events and daemon state; raises StorageError."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._experiment_ids: dict[str, int] = {}

    @classmethod
    def from_url(cls, url: str, connect_timeout: float = 10.0) -> Repository:
        """Return a repository on a new engine for `url`."""
        return cls(create_db_engine(url, connect_timeout))

    @property
    def dialect(self) -> str:
        """Return the backend name: `sqlite` or `postgresql`."""
        return self.engine.dialect.name

    @contextmanager
    def atomic(self) -> Iterator[Connection]:
        """Yield a connection inside one transaction; foreign errors become StorageError."""
        try:
            with self.engine.begin() as connection:
                yield connection
        except SQLAlchemyError as exc:
            self._experiment_ids.clear()
            raise StorageError(f"database error: {_first_line(exc)}") from exc

    def ensure_schema(self, *, in_child: bool = False) -> bool:
        """Apply migrations when the database is empty or behind; return True if it changed.

        `in_child` migrates from a spawned process, so this one never imports Alembic.
        """
        if schema.current_revision(self.engine) == schema.head_revision():
            return False
        if in_child:
            try:
                schema.upgrade_in_child(self.engine.url.render_as_string(hide_password=False))
            except schema.NoChildProcess as exc:
                log.warning("cannot migrate from a child process (%s); migrating in this one", exc)
                schema.upgrade(self.engine)
        else:
            schema.upgrade(self.engine)
        return True

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    # -- runs -------------------------------------------------------------------------------

    def live_runs(self, cluster: str) -> list[Run]:
        """Return the runs of `cluster` that are not final yet (pending, running, or awaiting sacct)."""
        query = run_select().where(runs.c.cluster == cluster, runs.c.final.is_(False))
        with self.atomic() as connection:
            return [_run_from_row(row) for row in connection.execute(query).mappings()]

    def runs_awaiting_logs(self, cluster: str) -> list[Run]:
        """Return the ended runs of `cluster` whose logs have not had their last read."""
        query = run_select().where(
            runs.c.cluster == cluster, runs.c.final.is_(True), runs.c.logs_done.is_(False)
        )
        with self.atomic() as connection:
            return [_run_from_row(row) for row in connection.execute(query).mappings()]

    def mark_logs_done(self, run_ids: Sequence[int]) -> None:
        """Record that these ended runs' logs had their last read."""
        if not run_ids:
            return
        with self.atomic() as connection:
            connection.execute(
                update(runs)
                .where(runs.c.id.in_(list(run_ids)), runs.c.final.is_(True))
                .values(logs_done=True)
            )

    def runs_for_jobs(self, cluster: str, job_ids: Sequence[str]) -> list[Run]:
        """Return every stored run of `cluster` with one of these Slurm job ids, newest first."""
        if not job_ids:
            return []
        found: list[Run] = []
        with self.atomic() as connection:
            for chunk in _chunks(sorted(set(job_ids)), 500):
                query = run_select().where(
                    runs.c.cluster == cluster, runs.c.slurm_job_id.in_(chunk)
                )
                found.extend(_run_from_row(row) for row in connection.execute(query).mappings())
        found.sort(
            key=lambda run: (
                run.job.submitted_at is not None,
                run.job.submitted_at or 0,
                run.id or 0,
            ),
            reverse=True,
        )
        return found

    def save_runs(
        self, changes: Sequence[tuple[Run, bool, Sequence[RunEvent]]], now: datetime
    ) -> list[Run]:
        """Insert or update runs (with their `final` flag) and add their events in one transaction.

        Returns the runs with their database ids.
        """
        saved: list[Run] = []
        with self.atomic() as connection:
            for run, final, events in changes:
                values = _run_values(run, final, now)
                values["experiment_id"] = self._experiment_id(connection, run.experiment, now)
                if run.id is None:
                    run_id = self._insert_run(connection, values)
                else:
                    run_id = run.id
                    # Usage the job record lacks (live sstat figures) stays as stored.
                    for key in _KEEP_WHEN_MISSING:
                        if values[key] is None:
                            del values[key]
                    connection.execute(update(runs).where(runs.c.id == run_id).values(values))
                if events:
                    connection.execute(
                        insert(run_events),
                        [
                            {
                                "run_id": run_id,
                                "at": ev.at,
                                "from_state": ev.from_state,
                                "to_state": ev.to_state,
                                "reason": ev.reason,
                            }
                            for ev in events
                        ],
                    )
                saved.append(_with_id(run, run_id))
        return saved

    def _insert_run(self, connection: Connection, values: dict[str, Any]) -> int:
        # An insert that meets its own key (a restart between commit and cache) updates it.
        dialect_insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        statement = dialect_insert(runs).values(values)
        keys = ("cluster", "slurm_job_id", "submitted_at")
        upsert = statement.on_conflict_do_update(
            index_elements=[runs.c[key] for key in keys],
            set_={key: statement.excluded[key] for key in values if key not in keys},
        ).returning(runs.c.id)
        return int(connection.execute(upsert).scalar_one())

    def _experiment_id(self, connection: Connection, name: str, now: datetime) -> int:
        if name in self._experiment_ids:
            return self._experiment_ids[name]
        found = connection.execute(
            select(experiments.c.id).where(experiments.c.name == name)
        ).scalar_one_or_none()
        if found is None:
            dialect_insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
            connection.execute(
                dialect_insert(experiments)
                .values(name=name, created_at=now, status="active")
                .on_conflict_do_nothing(index_elements=[experiments.c.name])
            )
            found = connection.execute(
                select(experiments.c.id).where(experiments.c.name == name)
            ).scalar_one()
        self._experiment_ids[name] = int(found)
        return int(found)

    # -- daemon state -----------------------------------------------------------------------

    def get_state(self, cluster: str, key: str) -> str | None:
        """Return a stored daemon value, or None."""
        query = select(daemon_state.c.value).where(
            daemon_state.c.cluster == cluster, daemon_state.c.key == key
        )
        with self.atomic() as connection:
            return connection.execute(query).scalar_one_or_none()

    def set_state(self, cluster: str, key: str, value: str) -> None:
        """Store a daemon value, replacing the old one."""
        dialect_insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        statement = dialect_insert(daemon_state).values(cluster=cluster, key=key, value=value)
        statement = statement.on_conflict_do_update(
            index_elements=[daemon_state.c.cluster, daemon_state.c.key],
            set_={"value": statement.excluded.value},
        )
        with self.atomic() as connection:
            connection.execute(statement)


def _run_values(run: Run, final: bool, now: datetime) -> dict[str, Any]:
    job = run.job
    values: dict[str, Any] = {column: getattr(job, field) for column, field in _JOB_COLUMNS.items()}
    values.update(
        cluster=run.cluster,
        name=run.name,
        status=run.status.value,
        slurm_state=job.state.value,
        tags=json.dumps(run.tags, sort_keys=True),
        restarts=run.restarts,
        cpu_efficiency=_cpu_efficiency(job),
        final=final,
        logs_done=False,
        updated_at=now,
    )
    return values


def _cpu_efficiency(job: Job) -> float | None:
    if not (job.total_cpu_seconds is not None and job.num_cpus and job.elapsed_seconds):
        return None
    return min(1.0, job.total_cpu_seconds / (job.num_cpus * job.elapsed_seconds))


def _run_from_row(row: RowMapping) -> Run:
    fields = {field: row[column] for column, field in _JOB_COLUMNS.items()}
    job = Job(state=JobState.parse(row["slurm_state"]), restarts=row["restarts"], **fields)
    return Run(
        id=row["id"],
        cluster=row["cluster"],
        experiment=row["experiment"],
        job=job,
        status=RunStatus(row["status"]),
        name=row["name"],
        tags=json.loads(row["tags"] or "{}"),
        restarts=row["restarts"],
    )


def _with_id(run: Run, run_id: int) -> Run:
    if run.id == run_id:
        return run
    return Run(
        id=run_id,
        cluster=run.cluster,
        experiment=run.experiment,
        job=run.job,
        status=run.status,
        name=run.name,
        tags=run.tags,
        restarts=run.restarts,
    )


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
