"""Issue #6 items 2-4 and 6: downtime, outages of Slurm and of the database, several clusters.

Item 2 (jobs that started and ended while no daemon ran) is proven by
tests/cluster/test_operations.py::test_a_job_purged_while_no_daemon_ran_is_recorded_by_backfill_and_catch_up.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from hpcsync.db.repository import Repository
from hpcsync.leader import AdvisoryLock
from hpcsync.models import Job, JobState
from hpcsync.slurm.fake import FakeScheduler
from hpcsync.sync import JobTracker

T0 = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)


def _job(job_id: str, state: JobState, comment: str) -> Job:
    return Job(
        job_id=job_id,
        job_id_raw=int(job_id),
        state=state,
        name="train",
        comment=comment,
        submitted_at=T0,
        restarts=0,
        num_cpus=1,
        mem_mb=100,
    )


def test_two_clusters_with_the_same_job_ids_share_one_postgresql(
    make_postgres_database: Callable[[str], str],
) -> None:
    url = make_postgres_database("hpcsync_test_two_clusters")
    repository = Repository.from_url(url)
    repository.ensure_schema()
    alpha = FakeScheduler(
        [
            _job("101", JobState.RUNNING, "experiment=a run=a1"),
            _job("102", JobState.PENDING, "experiment=a run=a2"),
        ],
        cluster="alpha",
    )
    beta = FakeScheduler(
        [
            _job("101", JobState.PENDING, "experiment=b run=b1"),
            _job("102", JobState.RUNNING, "experiment=b run=b2"),
        ],
        cluster="beta",
    )
    trackers = {
        name: JobTracker(s, repository, name) for name, s in (("alpha", alpha), ("beta", beta))
    }
    # Each cluster has its own leader: both advisory locks are held at once.
    locks = [AdvisoryLock(url, name) for name in trackers]
    try:
        assert all(lock.acquire() for lock in locks)
        for tracker in trackers.values():
            tracker.cycle()
        alpha.update("101", state=JobState.COMPLETED, exit_code=0)
        trackers["alpha"].cycle()
        trackers["beta"].cycle()
        with repository.atomic() as connection:
            runs = sorted(
                connection.execute(
                    text("SELECT cluster, slurm_job_id, slurm_state, name FROM runs")
                ).all()
            )
            events = connection.execute(
                text(
                    "SELECT r.cluster, r.slurm_job_id, count(*) FROM run_events e"
                    " JOIN runs r ON r.id = e.run_id GROUP BY r.cluster, r.slurm_job_id"
                )
            ).all()
            seen = connection.execute(text("SELECT cluster FROM hpcsync_state")).scalars().all()
    finally:
        for lock in locks:
            lock.release()
        repository.dispose()
    assert [(c, j, s) for c, j, s, _ in runs] == [
        ("alpha", "101", "COMPLETED"),
        ("alpha", "102", "PENDING"),
        ("beta", "101", "PENDING"),
        ("beta", "102", "RUNNING"),
    ]
    assert [name for *_, name in runs] == ["a1", "a2", "b1", "b2"]
    assert dict(((c, j), n) for c, j, n in events) == {
        ("alpha", "101"): 2,
        ("alpha", "102"): 1,
        ("beta", "101"): 1,
        ("beta", "102"): 1,
    }
    assert sorted(seen) == ["alpha", "beta"]


OUTAGE_CLUSTER = ("15", "hpcsync_outage")
OUTAGE_PORT = 5439
DB_OUTAGE = 20.0
"""Seconds PostgreSQL stays down in the middle of the job."""
METRIC_LINES = 60

METRIC_SCRIPT = f"""#!/bin/bash
for s in $(seq 0 {METRIC_LINES - 1}); do
  echo "step=$s loss=0.$s"
  sleep 0.75
done
"""


def _pg(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True, timeout=120)


@pytest.fixture
def private_postgres() -> Iterator[str]:
    """Yield the URL of a database on a PostgreSQL cluster of this test's own, dropped after."""
    if shutil.which("pg_createcluster") is None:
        pytest.skip("pg_createcluster not installed (scripts/postgres-up installs postgresql)")
    version, name = OUTAGE_CLUSTER
    subprocess.run(["pg_dropcluster", "--stop", version, name], capture_output=True, check=False)
    _pg("pg_createcluster", version, name, "-p", str(OUTAGE_PORT), "--", "--auth=trust")
    try:
        _pg("pg_ctlcluster", version, name, "start")
        _pg("su", "postgres", "-c", f"createdb -p {OUTAGE_PORT} -h 127.0.0.1 outage")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{OUTAGE_PORT}/outage"
    finally:
        subprocess.run(
            ["pg_dropcluster", "--stop", version, name], capture_output=True, check=False
        )


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.5)


def _count(url: str, sql: str) -> int:
    engine = create_engine(url, connect_args={"connect_timeout": 2})
    try:
        with engine.connect() as connection:
            return int(connection.execute(text(sql)).scalar_one())
    except SQLAlchemyError:
        return -1
    finally:
        engine.dispose()


def test_postgresql_stopped_in_the_middle_of_a_job_loses_nothing(
    slurm_cluster: Any, tmp_path: Path, private_postgres: str
) -> None:
    cluster, url = slurm_cluster, private_postgres
    work = Path(cluster.workdir("db-outage"))
    config = tmp_path / "config.toml"
    config.write_text(
        f'state_dir = "{tmp_path}"\n[database]\nurl = "{url}"\nconnect_timeout = 2\n'
        '[slurm]\nbackend = "cli"\npoll_interval = 1\ncatchup_days = 0\nusage_interval = 0\n'
        "max_backoff = 4\n"
        f'[logs]\nroots = ["{work}"]\nobserver = "polling"\npoll_interval = 0.5\n'
    )
    log_path = tmp_path / "daemon.log"
    with log_path.open("wb") as log:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "hpcsync", "-c", str(config), "run"],
            env=cluster.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    job_id = cluster.sbatch(
        f"--output={work}/m-%j.out", "--comment=experiment=outage run=db", script=METRIC_SCRIPT
    )
    # Catch-up after the outage also reads other tagged jobs' logs: count this job's points.
    mine = f"r.slurm_job_id = '{job_id}'"
    points = f"SELECT count(*) FROM metrics m JOIN runs r ON r.id = m.run_id WHERE {mine}"
    try:
        _wait_for(lambda: _count(url, points) >= 5, "the first points")
        _pg("pg_ctlcluster", *OUTAGE_CLUSTER, "stop", "-m", "fast")
        down_at = time.monotonic()
        time.sleep(DB_OUTAGE)
        assert daemon.poll() is None, "the daemon died with the database"
        _pg("pg_ctlcluster", *OUTAGE_CLUSTER, "start")
        outage = time.monotonic() - down_at
        cluster.wait_state(job_id, "COMPLETED", timeout=180)
        final = f"SELECT count(*) FROM runs r WHERE final AND {mine}"
        _wait_for(
            lambda: _count(url, points) == METRIC_LINES and _count(url, final) >= 1,
            "every point and the final state",
        )
        assert daemon.poll() is None
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)
        if cluster.state(job_id) in ("RUNNING", "PENDING"):
            cluster.scancel(job_id)
    text_log = log_path.read_text(errors="replace")
    print(f"\ndatabase outage survived: {outage:.1f} s; {METRIC_LINES} points, none lost")
    assert _count(url, "SELECT count(DISTINCT step) FROM metrics") == METRIC_LINES
    assert text_log.count("recovered after") >= 1, text_log
