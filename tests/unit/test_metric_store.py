"""Bulk metric upserts and log cursors, on SQLite and PostgreSQL."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from hpcsync.db import schema
from hpcsync.db.metric_store import (
    CursorRow,
    load_cursors,
    load_metrics,
    save_cursor,
    upsert_metrics,
)
from hpcsync.db.repository import Repository
from hpcsync.db.tables import log_cursors, metrics
from hpcsync.errors import StorageError
from hpcsync.models import Job, JobState, MetricPoint, Run, RunStatus

T0 = datetime(2026, 11, 22, 10, 0, 0, 123456, tzinfo=UTC)


def _run(repository: Repository, job_id: str = "100") -> int:
    job = Job(job_id=job_id, job_id_raw=int(job_id), state=JobState.RUNNING, submitted_at=T0)
    run = Run(cluster="c", experiment="e", job=job, status=RunStatus.RUNNING)
    saved = repository.save_runs([(run, False, [])], T0)
    assert saved[0].id is not None
    return saved[0].id


def _count(repository: Repository) -> int:
    with repository.atomic() as connection:
        return int(connection.execute(select(func.count()).select_from(metrics)).scalar_one())


def test_schema_head_has_log_cursors(repository: Repository) -> None:
    assert schema.current_revision(repository.engine) == schema.head_revision()


@pytest.mark.parametrize("size", [3, 5000])
def test_upsert_inserts_then_newer_value_wins(repository: Repository, size: int) -> None:
    run_id = _run(repository)
    first = [
        MetricPoint("loss", step, step * 0.5, T0 + timedelta(seconds=step)) for step in range(size)
    ]
    with repository.atomic() as connection:
        assert upsert_metrics(connection, run_id, first) == size
    assert _count(repository) == size

    later = T0 + timedelta(hours=1)
    repeated = [MetricPoint("loss", step, -1.0, later) for step in range(size // 2, size + 2)]
    with repository.atomic() as connection:
        upsert_metrics(connection, run_id, repeated)
        stored = load_metrics(connection, run_id, "loss")
    assert len(stored) == size + 2
    assert stored[0] == first[0]
    assert stored[size // 2].value == -1.0 and stored[size // 2].timestamp == later
    assert stored[-1].step == size + 1


def test_repeated_key_in_one_batch_keeps_the_last(repository: Repository) -> None:
    run_id = _run(repository)
    points = [MetricPoint("acc", 1, float(i), T0) for i in range(100)]
    with repository.atomic() as connection:
        upsert_metrics(connection, run_id, points)
        assert [p.value for p in load_metrics(connection, run_id)] == [99.0]


def test_non_finite_values_are_dropped(repository: Repository) -> None:
    run_id = _run(repository)
    points = [
        MetricPoint("loss", 0, math.nan, T0),
        MetricPoint("loss", 1, math.inf, T0),
        MetricPoint("loss", 2, 0.25, T0),
    ]
    with repository.atomic() as connection:
        assert upsert_metrics(connection, run_id, points) == 1
        assert load_metrics(connection, run_id) == [points[2]]


def test_timestamps_round_trip_in_utc(repository: Repository) -> None:
    run_id = _run(repository)
    zone = timezone(timedelta(hours=2))
    local = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=zone)
    for size in (1, 100):
        points = [MetricPoint(f"m{size}", step, 1.0, local) for step in range(size)]
        with repository.atomic() as connection:
            upsert_metrics(connection, run_id, points)
            stored = load_metrics(connection, run_id, f"m{size}")
        assert {p.timestamp for p in stored} == {local.astimezone(UTC)}
        assert stored[0].timestamp.tzinfo == UTC


def test_naive_timestamp_is_refused(repository: Repository) -> None:
    run_id = _run(repository)
    for size in (1, 100):
        points = [MetricPoint("x", step, 1.0, datetime(2026, 1, 1)) for step in range(size)]
        with pytest.raises((StorageError, ValueError)), repository.atomic() as connection:
            upsert_metrics(connection, run_id, points)
    assert _count(repository) == 0


def test_points_and_cursor_roll_back_together(repository: Repository) -> None:
    run_id = _run(repository)
    cursor = CursorRow(run_id, "/logs/a.out", device=1, inode=2, offset=10, counters={"loss": 3})
    with pytest.raises(RuntimeError), repository.atomic() as connection:
        upsert_metrics(connection, run_id, [MetricPoint("loss", s, 1.0, T0) for s in range(500)])
        save_cursor(connection, cursor, T0)
        raise RuntimeError("killed between read and commit")
    assert _count(repository) == 0
    with repository.atomic() as connection:
        assert load_cursors(connection, [run_id]) == {}


def test_cursor_save_and_load(repository: Repository) -> None:
    run_a, run_b = _run(repository, "100"), _run(repository, "200")
    cursor = CursorRow(
        run_a,
        "/logs/slurm-100.out",
        device=2049,
        inode=2**40,
        offset=2**33,
        fingerprint="ab" * 16,
        skipping=True,
        skipped_lines=4,
        counters={"loss": 12, "acc": 3},
        parser_state='{"keras_epoch": 2}',
    )
    other = CursorRow(run_b, "/logs/slurm-200.out")
    with repository.atomic() as connection:
        save_cursor(connection, cursor, T0)
        save_cursor(connection, other, T0)
    with repository.atomic() as connection:
        loaded = load_cursors(connection, [run_a, run_b])
    assert loaded == {(run_a, cursor.path): cursor, (run_b, other.path): other}

    moved = CursorRow(run_a, cursor.path, device=2049, inode=7, offset=5, counters={})
    with repository.atomic() as connection:
        save_cursor(connection, moved, T0 + timedelta(seconds=1))
        assert load_cursors(connection, [run_a]) == {(run_a, cursor.path): moved}
        rows = connection.execute(select(func.count()).select_from(log_cursors)).scalar_one()
    assert rows == 2


def test_points_of_two_runs_are_kept_apart(repository: Repository) -> None:
    run_a, run_b = _run(repository, "100"), _run(repository, "200")
    with repository.atomic() as connection:
        upsert_metrics(connection, run_a, [MetricPoint("loss", 0, 1.0, T0)] * 80)
        upsert_metrics(connection, run_b, [MetricPoint("loss", 0, 2.0, T0)])
        assert [p.value for p in load_metrics(connection, run_a)] == [1.0]
        assert [p.value for p in load_metrics(connection, run_b)] == [2.0]
