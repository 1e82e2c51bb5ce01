"""Issue #5's acceptance on the real Slurm: check, backfill and the daemon's catch-up at start."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

PURGE_TIMEOUT = 240.0


def _hpcsync(cluster: Any, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hpcsync", "-c", str(config), *args],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _config(directory: Path, url: str, **slurm: object) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    lines = [f'state_dir = "{directory}"', "[database]", f'url = "{url}"', "[slurm]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in slurm.items()]
    path = directory / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def url(
    request: pytest.FixtureRequest, tmp_path: Path, make_postgres_database: Callable[[str], str]
) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ops.db'}"
    return make_postgres_database("hpcsync_test_ops")


def test_check_passes_against_the_test_cluster(
    slurm_cluster: Any, tmp_path: Path, url: str
) -> None:
    config = _config(tmp_path / "check", url)
    assert _hpcsync(slurm_cluster, config, "db", "upgrade").returncode == 0
    result = _hpcsync(slurm_cluster, config, "check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "✓ slurm: cli backend, Slurm 22.05" in result.stdout
    assert "✓ job comments in sacct" in result.stdout


def test_a_bad_config_exits_2_naming_every_key(slurm_cluster: Any, tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        '[slurm]\nbackend = "rest"\npoll_interval = -1\n[logs]\nroots = "x"\nfoo = 1\n'
    )
    result = _hpcsync(slurm_cluster, config, "check")
    assert result.returncode == 2
    for key in ("slurm.backend", "slurm.poll_interval", "logs.roots", "logs.foo: unknown key"):
        assert key in result.stderr


def test_a_job_purged_while_no_daemon_ran_is_recorded_by_backfill_and_catch_up(
    slurm_cluster: Any, tmp_path: Path, make_postgres_database: Callable[[str], str]
) -> None:
    cluster = slurm_cluster
    sqlite = _config(tmp_path / "a", f"sqlite:///{tmp_path / 'a.db'}", catchup_days=0)
    postgres = _config(
        tmp_path / "b", make_postgres_database("hpcsync_test_catchup"), catchup_days=0
    )
    backfilled = _config(tmp_path / "c", f"sqlite:///{tmp_path / 'c.db'}", catchup_days=0)
    for config in (sqlite, postgres):
        # The daemon ran once and saw the cluster, then stopped.
        assert _hpcsync(cluster, config, "sync").returncode == 0
    since = (datetime.now() - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S")
    work = cluster.workdir("downtime")
    job_id = cluster.sbatch(
        f"--chdir={work}",
        "--job-name=downtime",
        "--comment=experiment=downtime run=while-down",
        script="echo step=1 loss=0.5; sleep 1; exit 5",
    )
    cluster.wait_state(job_id, "FAILED", timeout=120)
    deadline = time.monotonic() + PURGE_TIMEOUT
    while cluster.run("squeue", "-h", "-t", "all", "-j", job_id, "-O", "JobID").stdout.strip():
        assert time.monotonic() < deadline, f"job {job_id} was never purged from the controller"
        time.sleep(2)

    result = _hpcsync(cluster, backfilled, "backfill", "--since", since)
    assert result.returncode == 0, result.stderr
    for config in (sqlite, postgres):
        assert _hpcsync(cluster, config, "sync").returncode == 0  # catch-up at start
    for config in (backfilled, sqlite, postgres):
        shown = _hpcsync(cluster, config, "show", job_id, "--json")
        assert shown.returncode == 0, shown.stderr
        run = json.loads(shown.stdout)
        assert (run["experiment"], run["name"], run["status"]) == (
            "downtime",
            "while-down",
            "failed",
        )
        assert (run["slurm_state"], run["exit_code"]) == ("FAILED", 5)
        assert run["metrics"]["loss"]["value"] == 0.5
    again = _hpcsync(cluster, backfilled, "backfill", "--since", since)
    assert again.returncode == 0, again.stderr
    listed = _hpcsync(cluster, backfilled, "runs", "--json", "--experiment", "downtime")
    assert len(json.loads(listed.stdout)) == 1  # a second backfill adds no second run
