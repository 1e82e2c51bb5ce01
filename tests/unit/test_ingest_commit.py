"""A backlog commits chunk by chunk on the writer thread, in order, and exactly once."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from hpcsync import ingest as ingest_module
from hpcsync.db.metric_store import load_cursors, load_metrics
from hpcsync.db.repository import Repository
from hpcsync.db.tables import metrics
from hpcsync.errors import StorageError
from hpcsync.ingest import LogIngester
from hpcsync.ingest_commit import ChunkCommitter
from hpcsync.models import Job, JobState, Run, RunStatus

SUBMITTED = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
LINES = 600
CHUNK = 2048


def test_commits_run_in_order_one_at_a_time() -> None:
    committer = ChunkCommitter()
    done: list[int] = []
    running = threading.Semaphore(1)

    def commit(number: int) -> None:
        assert running.acquire(blocking=False), "two commits in flight"
        time.sleep(0.002)
        done.append(number)
        running.release()

    for number in range(20):
        committer.submit(lambda number=number: commit(number))  # type: ignore[misc]
    committer.close()
    assert done == list(range(20))


def test_a_failed_commit_raises_from_the_next_submit_and_stops_it() -> None:
    committer = ChunkCommitter()
    done: list[int] = []

    def fail() -> None:
        raise StorageError("database error: gone")

    committer.submit(fail)
    with pytest.raises(StorageError):
        committer.submit(lambda: done.append(1))
    committer.drain()
    committer.close()
    assert done == []


@pytest.fixture
def backlog(tmp_path: Path) -> Path:
    path = tmp_path / "slurm-700.out"
    with path.open("w", encoding="utf-8") as handle:
        for step in range(LINES):
            handle.write(
                f"\r 10%|#         | 1/10\r 20%|##        | 2/10\nstep={step} loss={step}\n"
            )
    return path


def _run(repository: Repository, log_file: Path) -> Run:
    job = Job(
        job_id="700",
        job_id_raw=700,
        state=JobState.RUNNING,
        stdout_path=str(log_file),
        stderr_path=str(log_file),
        work_dir=str(log_file.parent),
        node_list="node01",
        submitted_at=SUBMITTED,
    )
    run = Run(cluster="test", experiment="exp", job=job, status=RunStatus.RUNNING)
    return repository.save_runs([(run, False, [])], SUBMITTED)[0]


@pytest.fixture
def ingester(repository: Repository) -> Iterator[LogIngester]:
    made = LogIngester(repository, observer="polling", local_timezone=UTC, max_line_bytes=512)
    made.max_read_bytes = CHUNK
    yield made
    made.close()


def _rows(repository: Repository) -> int:
    with repository.atomic() as connection:
        return int(connection.execute(select(func.count()).select_from(metrics)).scalar_one())


def _committed_offset(repository: Repository, run: Run) -> int:
    assert run.id is not None
    with repository.atomic() as connection:
        (cursor,) = load_cursors(connection, [run.id]).values()
    return cursor.offset


def test_a_backlog_commits_on_the_writer_thread_exactly_once(
    repository: Repository,
    backlog: Path,
    ingester: LogIngester,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads: list[str] = []
    real_save = ingest_module.save_cursor  # type: ignore[attr-defined]

    def recording(*args: Any, **kwargs: Any) -> None:
        threads.append(threading.current_thread().name)
        real_save(*args, **kwargs)

    monkeypatch.setattr(ingest_module, "save_cursor", recording)
    run = _run(repository, backlog)
    ingester.track([run])
    stats = ingester.ingest()
    assert stats.points == LINES == _rows(repository)
    assert len(threads) >= backlog.stat().st_size // CHUNK
    assert any(name.startswith("hpcsync-commit") for name in threads)
    assert threads[-1] == threading.current_thread().name  # the last chunk commits inline
    assert _committed_offset(repository, run) == backlog.stat().st_size
    assert ingester.ingest().points == 0


def test_a_commit_that_fails_mid_backlog_loses_and_doubles_nothing(
    repository: Repository,
    backlog: Path,
    ingester: LogIngester,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_save = ingest_module.save_cursor  # type: ignore[attr-defined]
    calls = 0

    def failing_third(*args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise StorageError("database error: connection lost")
        real_save(*args, **kwargs)

    monkeypatch.setattr(ingest_module, "save_cursor", failing_third)
    run = _run(repository, backlog)
    ingester.track([run])
    with pytest.raises(StorageError):
        ingester.ingest()
    assert calls == 3  # nothing was committed after the failed chunk
    committed = _rows(repository)
    assert 0 < committed < LINES
    offset = _committed_offset(repository, run)
    assert offset < backlog.stat().st_size
    assert backlog.read_bytes()[:offset].count(b"loss=") == committed

    monkeypatch.setattr(ingest_module, "save_cursor", real_save)
    assert ingester.ingest().points == LINES - committed
    assert run.id is not None
    with repository.atomic() as connection:
        points = load_metrics(connection, run.id, "loss")
    assert sorted(point.step for point in points) == list(range(LINES))
    assert all(point.value == point.step for point in points)
