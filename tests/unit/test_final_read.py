"""An ended run's last log read survives a crash between the run's end and that read."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from hpcsync.db.metric_store import load_metrics
from hpcsync.db.repository import Repository
from hpcsync.ingest import LogIngester
from hpcsync.models import Job, JobState
from hpcsync.oneshot import follow_logs
from hpcsync.slurm.fake import FakeScheduler
from hpcsync.sync import JobTracker

T0 = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)


def _job(log: Path, state: JobState, **fields: object) -> Job:
    return Job(
        job_id="31",
        job_id_raw=31,
        state=state,
        name="train",
        comment="experiment=crash",
        submitted_at=T0,
        started_at=T0,
        partition="debug",
        num_cpus=1,
        work_dir=str(log.parent),
        stdout_path=str(log),
        stderr_path=str(log),
        **fields,  # type: ignore[arg-type]
    )


def _points(repository: Repository) -> list[tuple[int, float]]:
    row = repository.find_run("31")
    assert row is not None
    with repository.atomic() as connection:
        return [(p.step, p.value) for p in load_metrics(connection, row["id"], "loss")]


def test_a_crash_before_the_last_read_is_made_good_by_the_next_process(
    tmp_path: Path, repository: Repository
) -> None:
    log = tmp_path / "train-31.out"
    log.write_text("step=1 loss=0.9\n")
    slurm = FakeScheduler([_job(log, JobState.RUNNING)], cluster="hpc")

    tracker = JobTracker(slurm, repository, "hpc")
    ingester = LogIngester(repository, observer="polling")
    follow_logs(ingester, tracker, tracker.cycle())
    assert _points(repository) == [(1, 0.9)]

    with log.open("a") as handle:
        handle.write("step=2 loss=0.5\n")
    slurm.update("31", state=JobState.COMPLETED, exit_code=0, ended_at=T0)
    tracker.cycle()  # the run is final; the process dies before its last read
    ingester.close()
    assert repository.runs_awaiting_logs("hpc") != []

    restarted = JobTracker(slurm, repository, "hpc")
    fresh = LogIngester(repository, observer="polling")
    try:
        follow_logs(fresh, restarted, restarted.cycle())
        assert _points(repository) == [(1, 0.9), (2, 0.5)]
        assert repository.runs_awaiting_logs("hpc") == []
        follow_logs(fresh, restarted, restarted.cycle())
        assert _points(repository) == [(1, 0.9), (2, 0.5)]
    finally:
        fresh.close()
