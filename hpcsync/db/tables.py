"""The tracking database's tables (SQLAlchemy Core); names and columns are the external contract."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    true,
)
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)


class UtcDateTime(TypeDecorator[datetime]):
    """Stores UTC; returns timezone-aware UTC datetimes on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} cannot be stored; give it a zone")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            value = datetime.fromisoformat(str(value))
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


experiments = Table(
    "experiments",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(255), nullable=False, unique=True),
    Column("owner", String(255)),
    Column("description", Text),
    Column("created_at", UtcDateTime, nullable=False),
    Column("status", String(32), nullable=False, server_default="active"),
)

runs = Table(
    "runs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("experiment_id", Integer, ForeignKey("experiments.id"), nullable=False, index=True),
    Column("name", String(255)),
    Column("started_at", UtcDateTime),
    Column("ended_at", UtcDateTime),
    Column("status", String(16), nullable=False),
    Column("seed", BigInteger),
    Column("cluster", String(128), nullable=False),
    Column("slurm_job_id", String(64), nullable=False),
    Column("slurm_job_id_raw", BigInteger, nullable=False),
    Column("array_job_id", BigInteger),
    Column("array_task_id", Integer),
    Column("slurm_state", String(32), nullable=False),
    Column("state_reason", String(255)),
    Column("exit_code", Integer),
    Column("exit_signal", Integer),
    Column("job_name", String(255)),
    Column("user_name", String(128)),
    Column("account", String(128)),
    Column("partition", String(128)),
    Column("node_list", Text),
    Column("num_nodes", Integer),
    Column("num_cpus", Integer),
    Column("mem_mb", BigInteger),
    Column("num_gpus", Integer),
    Column("gpu_type", String(64)),
    Column("submitted_at", UtcDateTime),
    Column("work_dir", Text),
    Column("stdout_path", Text),
    Column("stderr_path", Text),
    Column("comment", Text),
    Column("tags", Text, nullable=False, server_default="{}"),
    Column("restarts", Integer, nullable=False, server_default="0"),
    Column("elapsed_seconds", BigInteger),
    Column("total_cpu_seconds", Float),
    Column("max_rss_mb", Float),
    Column("cpu_efficiency", Float),
    Column("gpu_util_mean", Float),
    Column("final", Boolean, nullable=False, server_default=false()),
    # True once an ended run's logs had their last read; rows from before 0005 count as read.
    Column("logs_done", Boolean, nullable=False, server_default=true()),
    Column("updated_at", UtcDateTime, nullable=False),
    UniqueConstraint("cluster", "slurm_job_id", "submitted_at"),
    Index("ix_runs_cluster_status", "cluster", "status"),
    Index("ix_runs_cluster_job_raw", "cluster", "slurm_job_id_raw"),
)

metrics = Table(
    "metrics",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(255), nullable=False),
    Column("step", BigInteger, nullable=False),
    Column("value", Float, nullable=False),
    Column("timestamp", UtcDateTime, nullable=False),
    UniqueConstraint("run_id", "name", "step"),
)

run_events = Table(
    "run_events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column(
        "run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False, index=True
    ),
    Column("at", UtcDateTime, nullable=False),
    Column("from_state", String(32)),
    Column("to_state", String(32), nullable=False),
    Column("reason", String(255)),
)

daemon_state = Table(
    "hpcsync_state",
    metadata,
    Column("cluster", String(128), primary_key=True),
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

log_cursors = Table(
    "log_cursors",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("path", Text, nullable=False),
    Column("device", BigInteger),
    Column("inode", BigInteger),
    Column("byte_offset", BigInteger, nullable=False, server_default="0"),
    Column("fingerprint", String(64)),
    Column("skipping", Boolean, nullable=False, server_default=false()),
    Column("skipped_lines", BigInteger, nullable=False, server_default="0"),
    Column("counters", Text, nullable=False, server_default="{}"),
    Column("parser_state", Text),
    Column("updated_at", UtcDateTime, nullable=False),
    UniqueConstraint("run_id", "path"),
)
"""Where reading stopped in each log or sample file of a run; committed with the metrics read."""

run_gpus = Table(
    "run_gpus",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("node", String(255), nullable=False),
    Column("i", Integer, nullable=False),
    Column("minor", Integer),
    Column("uuid", String(128), nullable=False),
    Column("name", String(255), nullable=False, server_default=""),
    Column("driver", String(64)),
    Column("seen_at", UtcDateTime, nullable=False),
    UniqueConstraint("run_id", "node", "uuid"),
)
"""The physical GPUs a run had, from the header lines of its sample files: one row per
(run, node, UUID). `i` is the GPU's index within the job (the `{i}` of `system/gpu_{i}_*`),
`minor` its `/dev/nvidiaN`; `seen_at` is when the sampler last wrote the header."""

run_params = Table(
    "run_params",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("key", String(255), nullable=False),
    Column("value", Text, nullable=False),
    UniqueConstraint("run_id", "key"),
)
"""A run's parameters as text, from the run manifest its sbatch template wrote: the
hyperparameters, `git_sha` (the commit of the training code), `git_dirty` and `seed`."""
