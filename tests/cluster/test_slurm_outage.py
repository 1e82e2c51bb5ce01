"""Issue #6, item 3: with slurmctld stopped the daemon stays up, logs the outage once, backs off,
and catches up when Slurm is back.

It runs on a private testbed (its own directory and ports), so stopping its controller never
disturbs the shared test cluster.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcsync.db.repository import Repository
from hpcsync.errors import StorageError

ROOT = Path(__file__).resolve().parents[2]
TESTBED = ROOT / "scripts" / "slurm-testbed"
OUTAGE_SECONDS = 25.0


@pytest.fixture(scope="module")
def private_cluster() -> Iterator[dict[str, str]]:
    reason = None
    if os.geteuid() != 0:
        reason = "the private test cluster needs root"
    env = {
        **os.environ,
        "HPCSYNC_TESTBED_DIR": "/var/tmp/hpcsync-outage",
        "HPCSYNC_TESTBED_PORT": "6937",
    }
    if reason is None:
        started = subprocess.run(
            [str(TESTBED), "start", "--min-job-age", "300"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if started.returncode != 0:
            reason = f"private test cluster did not start: {started.stderr.strip()[-300:]}"
    if reason is not None:
        if os.environ.get("HPCSYNC_REQUIRE_SLURM") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    env["SLURM_CONF"] = "/var/tmp/hpcsync-outage/etc/slurm.conf"
    try:
        yield env
    finally:
        subprocess.run(
            [str(TESTBED), "stop"], env=env, capture_output=True, timeout=300, check=False
        )


def _slurmctld_pid() -> int:
    return int(Path("/var/tmp/hpcsync-outage/run/slurmctld.pid").read_text().strip())


def _status(repository: Repository, job_id: str) -> str | None:
    try:
        row = repository.find_run(job_id)
    except StorageError:
        return None  # the daemon is still creating the schema
    return None if row is None else str(row["status"])


def _final_exit_code(repository: Repository, job_id: str) -> int | None:
    row = repository.find_run(job_id)
    return None if row is None or row["status"] != "completed" else row["exit_code"]


def _wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def test_the_daemon_rides_out_a_slurmctld_outage(
    private_cluster: dict[str, str], tmp_path: Path
) -> None:
    env = private_cluster
    work = tmp_path / "jobs"
    work.mkdir()
    work.chmod(0o777)
    database = tmp_path / "outage.db"
    config = tmp_path / "config.toml"
    config.write_text(
        f'state_dir = "{tmp_path}"\n[database]\nurl = "sqlite:///{database}"\n'
        "[slurm]\npoll_interval = 1\nmax_backoff = 4\ncatchup_days = 0\ncommand_timeout = 10\n"
        f'[logs]\nroots = ["{work}"]\npoll_interval = 1\n'
    )
    daemon = subprocess.Popen(
        [sys.executable, "-m", "hpcsync", "-c", str(config), "run"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert daemon.stderr is not None
    repository = Repository.from_url(f"sqlite:///{database}")
    try:
        job_id = subprocess.run(
            [
                "sbatch",
                "--parsable",
                f"--chdir={work}",
                "--comment=experiment=outage",
                "--wrap",
                "sleep 10; echo step=1 loss=0.25",
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()
        _wait_for(
            lambda: database.exists() and _status(repository, job_id) == "running",
            90,
            "the job to run",
        )

        os.kill(_slurmctld_pid(), signal.SIGTERM)
        down = time.monotonic()
        time.sleep(OUTAGE_SECONDS)  # the job ends while the controller is down
        assert daemon.poll() is None, "the daemon died during the outage"
        subprocess.run(
            [str(TESTBED), "start", "--min-job-age", "300"],
            env=env,
            check=True,
            capture_output=True,
            timeout=300,
        )
        outage = time.monotonic() - down
        _wait_for(
            lambda: _final_exit_code(repository, job_id) is not None,
            120,
            "the job's end after the outage",
        )
        row = repository.find_run(job_id)
        assert row is not None and row["exit_code"] == 0
        assert row["metrics"]["loss"]["value"] == 0.25
    finally:
        repository.dispose()
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=60)
        log = daemon.stderr.read()
        daemon.stderr.close()
    assert code == 0
    errors = [line for line in log.splitlines() if " ERROR " in line and "Slurm" in line]
    recovered = [line for line in log.splitlines() if "recovered after" in line]
    print(f"slurmctld outage survived: {outage:.1f} s; error lines: {len(errors)}")
    assert len(errors) == 1, log
    assert len(recovered) == 1, log
