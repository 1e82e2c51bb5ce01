"""Issue #6 item 7 on the real Slurm: a job of an unprivileged user swaps its log for a symlink.

The job runs as `hpcsync-test` (created when missing, submitted through runuser), writes two metric lines, waits until the
daemon has read them, then replaces its log with a symlink to a root-only file holding a secret.
The daemon path (JobTracker + LogIngester over the job's work directory as log root) must keep
the two metrics, count the refusal, and never store the secret.
"""

from __future__ import annotations

import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hpcsync.db.metric_store import load_metrics
from hpcsync.db.repository import Repository
from hpcsync.ingest import IngestStats, LogIngester
from hpcsync.models import Run
from hpcsync.slurm.cli import CliScheduler
from hpcsync.sync import JobTracker

USER = "hpcsync-test"
DEADLINE = 120.0

SCRIPT = r"""#!/bin/bash
echo "step=1 loss=1.5"
echo "step=2 loss=0.5"
for i in $(seq 600); do [ -e go ] && break; sleep 0.2; done
rm -f "slurm-$SLURM_JOB_ID.out"
ln -s "$SECRET" "slurm-$SLURM_JOB_ID.out"
echo "step=3 loss=0.1"
"""


def _unprivileged_user() -> str:
    try:
        pwd.getpwnam(USER)
    except KeyError:
        if shutil.which("useradd") is None:
            pytest.skip("useradd missing: cannot create the unprivileged job user")
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/bin/bash", USER],
            check=True,
            capture_output=True,
        )
    return USER


def _metrics(repository: Repository, run: Run) -> dict[str, dict[int, float]]:
    assert run.id is not None
    with repository.atomic() as connection:
        points = load_metrics(connection, run.id)
    out: dict[str, dict[int, float]] = {}
    for point in points:
        out.setdefault(point.name, {})[point.step] = point.value
    return out


def test_a_log_swapped_for_a_symlink_to_a_root_only_file_is_refused(
    slurm_cluster: Any, repository: Repository, tmp_path: Path
) -> None:
    user = _unprivileged_user()
    workdir: Path = slurm_cluster.workdir("hostile")
    vault = slurm_cluster.workdir("vault")
    vault.chmod(0o700)
    secret = vault / "secret.out"
    secret.write_text("step=1 secret=42\nstep=2 secret=43\n")
    secret.chmod(0o600)
    # `sbatch --uid` of Slurm 22.05 still runs the job as root: submit as the user instead.
    submitted = subprocess.run(
        [
            "runuser",
            "-u",
            user,
            "--",
            "sbatch",
            "--parsable",
            f"--chdir={workdir}",
            f"--output={workdir}/slurm-%j.out",
            "--comment=experiment=hostile run=symlink-swap",
            f"--export=ALL,SECRET={secret}",
        ],
        input=SCRIPT,
        env=slurm_cluster.env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    job_id = submitted.stdout.strip().split(";", 1)[0]
    scheduler = CliScheduler(env=slurm_cluster.env, timeout=30)
    tracker = JobTracker(scheduler, repository, scheduler.cluster_name())
    ingester = LogIngester(repository, roots=[str(workdir)], observer="polling")
    stats = IngestStats()
    released = False
    try:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            cycle = tracker.cycle()
            live = {run.id for run in tracker.live_runs}
            ended = [run for run, _ in cycle.changes if run.id not in live]
            stats.add(ingester.follow(tracker.live_runs, ended))
            found = repository.runs_for_jobs(tracker.cluster, [job_id])
            run = found[0] if found else None
            first = run is not None and not released and _metrics(repository, run)
            if first and first.get("loss") == {1: 1.5, 2: 0.5}:
                (workdir / "go").touch()
                released = True
            if run is not None and run.job.state.value == "COMPLETED" and not tracker.live_runs:
                stats.add(ingester.finish([run]))
                break
            time.sleep(1.0)
        else:
            pytest.fail(f"job {job_id} did not complete in {DEADLINE} s")
    finally:
        ingester.close()
        slurm_cluster.run("scancel", job_id)
    assert released, "the daemon never read the job's first metrics"
    assert run is not None
    link = workdir / f"slurm-{job_id}.out"
    assert link.is_symlink()  # the job really did swap its log
    metrics = _metrics(repository, run)
    assert metrics == {"loss": {1: 1.5, 2: 0.5}}  # kept, and nothing of the secret
    assert stats.refused >= 1


@pytest.fixture(autouse=True)
def _no_trap_left(slurm_cluster: Any) -> Iterator[None]:
    """Remove the swapped logs, so later tests' catch-up of recent jobs finds no refusal."""
    yield
    for link in slurm_cluster.jobs_dir.glob("hostile-*/slurm-*.out"):
        if link.is_symlink():
            link.unlink()
