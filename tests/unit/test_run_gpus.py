"""The `run_gpus` table, its migration, and the usage columns written through metric_store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import delete, inspect, select

from hpcsync.db import schema
from hpcsync.db.metric_store import (
    LiveUsageRow,
    RunGpu,
    gpu_util_mean,
    load_run_gpus,
    set_gpu_util_mean,
    update_live_usage,
    upsert_rows,
    upsert_run_gpus,
)
from hpcsync.db.repository import Repository
from hpcsync.db.tables import metadata, run_gpus, runs
from hpcsync.models import Job, JobState, Run, RunStatus

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def _gpu(i: int, minor: int | None, uuid: str, node: str = "node01", **changes: object) -> RunGpu:
    values: dict[str, object] = {
        "node": node,
        "i": i,
        "minor": minor,
        "uuid": uuid,
        "name": f"Fake GPU minor{minor}",
        "driver": "999.99-fake",
        "seen_at": NOW,
    }
    values.update(changes)
    return RunGpu(**values)  # type: ignore[arg-type]


def _save_run(repository: Repository, job_id: int, *, final: bool = False) -> int:
    job = Job(
        job_id=str(job_id),
        job_id_raw=job_id,
        state=JobState.RUNNING,
        submitted_at=NOW - timedelta(minutes=5),
        num_cpus=2,
    )
    run = Run(cluster="test", experiment="gpus", job=job, status=RunStatus.RUNNING)
    saved = repository.save_runs([(run, final, [])], NOW)[0]
    assert saved.id is not None
    return saved.id


def _column(repository: Repository, run_id: int, name: str) -> object:
    with repository.atomic() as connection:
        return connection.execute(select(runs.c[name]).where(runs.c.id == run_id)).scalar_one()


def test_migration_0003_creates_run_gpus_as_the_tables_say(repository: Repository) -> None:
    assert schema.current_revision(repository.engine) == schema.head_revision()
    with repository.engine.connect() as connection:
        context = MigrationContext.configure(connection)
        diffs = compare_metadata(context, metadata)
        columns = {c["name"] for c in inspect(connection).get_columns("run_gpus")}
        unique = inspect(connection).get_unique_constraints("run_gpus")
    assert [diff for diff in diffs if "run_gpus" in repr(diff)] == []
    assert columns == {"id", "run_id", "node", "i", "minor", "uuid", "name", "driver", "seen_at"}
    assert [sorted(u["column_names"]) for u in unique] == [["node", "run_id", "uuid"]]


def test_migration_0003_downgrades_and_upgrades_again(repository: Repository) -> None:
    config = Config()
    config.set_main_option("script_location", schema.SCRIPT_LOCATION)
    with repository.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0002")
    assert "run_gpus" not in inspect(repository.engine).get_table_names()
    assert repository.ensure_schema()
    assert "run_gpus" in inspect(repository.engine).get_table_names()


def test_run_gpus_are_keyed_by_run_node_and_uuid(repository: Repository) -> None:
    run_id = _save_run(repository, 10)
    other = _save_run(repository, 11)
    first = [_gpu(0, 0, "GPU-0"), _gpu(1, 1, "GPU-1")]
    with repository.atomic() as connection:
        assert upsert_run_gpus(connection, run_id, first) == 2
        assert upsert_run_gpus(connection, other, [_gpu(0, 1, "GPU-1")]) == 1
        assert upsert_run_gpus(connection, run_id, []) == 0
    # A restarted sampler writes its headers again; a second node adds its own.
    later = NOW + timedelta(minutes=1)
    again = [
        _gpu(0, 0, "GPU-0", seen_at=later),
        _gpu(0, 0, "GPU-0", seen_at=later),
        _gpu(2, 0, "GPU-0", node="node02", name="Other"),
    ]
    with repository.atomic() as connection:
        assert upsert_run_gpus(connection, run_id, again) == 2
        stored = load_run_gpus(connection, run_id)
        assert load_run_gpus(connection, other) == [_gpu(0, 1, "GPU-1")]
    assert stored == [
        _gpu(0, 0, "GPU-0", seen_at=later),
        _gpu(1, 1, "GPU-1"),
        _gpu(2, 0, "GPU-0", node="node02", name="Other"),
    ]


def test_run_gpus_go_with_their_run(repository: Repository) -> None:
    run_id = _save_run(repository, 12)
    with repository.atomic() as connection:
        upsert_run_gpus(connection, run_id, [_gpu(0, None, "GPU-0", driver=None)])
        assert load_run_gpus(connection, run_id)[0].minor is None
        connection.execute(delete(runs).where(runs.c.id == run_id))
        assert connection.execute(select(run_gpus)).all() == []


def _points(name: str, values: list[float]) -> list[tuple[str, int, float, datetime]]:
    return [(name, step, value, NOW) for step, value in enumerate(values)]


def test_gpu_util_mean_is_over_all_gpus_and_intervals(repository: Repository) -> None:
    run_id = _save_run(repository, 20)
    with repository.atomic() as connection:
        upsert_run_gpus(connection, run_id, [_gpu(0, 0, "GPU-0"), _gpu(1, 1, "GPU-1")])
        upsert_rows(connection, run_id, _points("system/gpu_0_utilization_percentage", [30] * 3))
        upsert_rows(connection, run_id, _points("system/gpu_1_utilization_percentage", [71] * 3))
        # Neither of these is a utilisation sample.
        upsert_rows(connection, run_id, _points("system/gpu_0_memory_usage_megabytes", [3000]))
        upsert_rows(connection, run_id, _points("gpu_0_utilization_percentage", [0.0]))
        assert gpu_util_mean(connection, run_id) == pytest.approx(50.5)
        set_gpu_util_mean(connection, run_id, 50.5)
        set_gpu_util_mean(connection, run_id, None)  # keeps what is there
    assert _column(repository, run_id, "gpu_util_mean") == 50.5


def test_gpu_util_mean_without_gpus_is_none(repository: Repository) -> None:
    run_id = _save_run(repository, 21)
    with repository.atomic() as connection:
        assert gpu_util_mean(connection, run_id) is None
        upsert_run_gpus(connection, run_id, [_gpu(0, 0, "GPU-0")])
        assert gpu_util_mean(connection, run_id) is None  # a GPU, but no samples yet


def test_live_usage_never_lowers_rss_and_leaves_final_runs(repository: Repository) -> None:
    running = _save_run(repository, 30)
    final = _save_run(repository, 31, final=True)
    with repository.atomic() as connection:
        sent = update_live_usage(
            connection, [LiveUsageRow(running, 170.0, 0.5), LiveUsageRow(final, 99.0, 0.9)]
        )
        assert sent == 2
        assert update_live_usage(connection, []) == 0
    assert _column(repository, running, "max_rss_mb") == 170.0
    assert _column(repository, running, "cpu_efficiency") == 0.5
    assert _column(repository, final, "max_rss_mb") is None
    assert _column(repository, final, "cpu_efficiency") is None

    with repository.atomic() as connection:
        update_live_usage(connection, [LiveUsageRow(running, 20.0, None)])
    assert _column(repository, running, "max_rss_mb") == 170.0
    assert _column(repository, running, "cpu_efficiency") == 0.5
    with repository.atomic() as connection:
        update_live_usage(connection, [LiveUsageRow(running, None, 0.75)])
        update_live_usage(connection, [LiveUsageRow(running, 200.0, None)])
    assert _column(repository, running, "max_rss_mb") == 200.0
    assert _column(repository, running, "cpu_efficiency") == 0.75
