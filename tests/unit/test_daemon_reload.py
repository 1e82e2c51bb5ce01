"""SIGHUP: the daemon re-reads its config and applies it without a restart, or keeps the old one.

The daemon runs as a subprocess (harness in test_daemon_notify.py). A changed poll interval is
shown by a poll that could not otherwise happen (the old interval is an hour); a changed log
level by INFO lines that the old level hid. Nothing waits a fixed time.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from test_daemon_notify import StartDaemon, start_daemon, write_config

from hpcsync.db.metric_store import load_metrics
from hpcsync.db.repository import Repository
from hpcsync.errors import ConfigError
from hpcsync.ingest import LogIngester
from hpcsync.models import Job, JobState, Run, RunStatus

__all__ = ["start_daemon"]  # the fixture, imported for pytest


def test_sighup_applies_a_new_poll_interval_and_log_level(
    tmp_path: Path, start_daemon: StartDaemon
) -> None:
    config = tmp_path / "config.toml"
    write_config(config, tmp_path, top='log_level = "WARNING"\n', slurm="poll_interval = 3600\n")
    daemon = start_daemon(config)
    daemon.notify.wait_for("READY=1")

    write_config(
        config,
        tmp_path,
        top='log_level = "INFO"\n',
        slurm="poll_interval = 1\n",
        sections='[database]\nurl = "postgresql+psycopg://hpcsync:s3cret@127.0.0.1:1/none"\n',
    )
    daemon.signal(signal.SIGHUP)
    reloaded = daemon.wait_line("config reloaded from")
    line = daemon.lines[reloaded]
    assert f"config reloaded from {config}" in line
    assert "log_level 'WARNING' -> 'INFO'" in line and "slurm.poll_interval 3600.0 -> 1.0" in line
    # The startup poll ran at WARNING; this one runs on the new interval and logs at INFO.
    daemon.wait_line("polled 0 jobs", after=reloaded)
    daemon.notify.wait_for("READY=1", count=2)
    fields = daemon.notify.fields()
    assert fields.index("RELOADING=1") > fields.index("READY=1")
    assert any(f.startswith("MONOTONIC_USEC=") for f in fields)

    assert daemon.stop() == 0
    text = daemon.text()
    assert "reload: database changed; restart hpcsync to apply it" in text
    assert "s3cret" not in text
    assert (tmp_path / "hpcsync.db").exists()  # still the SQLite database it started with


def test_a_broken_config_on_sighup_keeps_the_running_one(
    tmp_path: Path, start_daemon: StartDaemon
) -> None:
    config = tmp_path / "config.toml"
    write_config(config, tmp_path, slurm="poll_interval = 1\n")
    daemon = start_daemon(config)
    daemon.notify.wait_for("READY=1")
    daemon.wait_line("polled 0 jobs")

    write_config(
        config, tmp_path, top='log_level = "LOUD"\n', slurm='poll_interval = "x"\nbogus = 1\n'
    )
    daemon.signal(signal.SIGHUP)
    failed = daemon.wait_line("reload failed, keeping the running config")
    line = daemon.lines[failed]
    assert "ERROR" in line and "3 problem(s)" in line
    assert "log_level" in line and "slurm.poll_interval" in line
    assert "slurm.bogus: unknown key" in line
    daemon.notify.wait_for("READY=1", count=2)  # the reload ended: systemd is told so
    daemon.wait_line("polled 0 jobs", after=failed + 1)  # still polling, every second

    config.write_text("not = [toml\n")
    daemon.signal(signal.SIGHUP)
    failed = daemon.wait_line("is not valid TOML", after=failed + 1)
    daemon.wait_line("polled 0 jobs", after=failed + 1)

    assert daemon.stop() == 0
    assert sum("reload failed" in line for line in daemon.lines) == 2


def _run(repository: Repository, stdout: Path) -> Run:
    job = Job(
        job_id="101",
        job_id_raw=101,
        state=JobState.RUNNING,
        stdout_path=str(stdout),
        stderr_path=str(stdout),
        work_dir=str(stdout.parent),
        node_list="node01",
        num_gpus=0,
        submitted_at=datetime.now(UTC) - timedelta(hours=1),
    )
    run = Run(cluster="test", experiment="exp", job=job, status=RunStatus.RUNNING)
    return repository.save_runs([(run, False, [])], datetime.now(UTC))[0]


def _steps(repository: Repository, run: Run) -> dict[int, float]:
    assert run.id is not None
    with repository.atomic() as connection:
        return {p.step: p.value for p in load_metrics(connection, run.id, "loss")}


def test_reconfigure_swaps_roots_observer_and_patterns_and_keeps_every_file(
    tmp_path: Path,
) -> None:
    repository = Repository.from_url(f"sqlite:///{tmp_path / 'tracking.db'}")
    repository.ensure_schema()
    root = tmp_path / "root"
    root.mkdir()
    in_root = root / "slurm-101.out"
    in_root.write_text("loss=0.5 step=1\n")
    os.utime(in_root, (time.time(), time.time()))
    run = _run(repository, tmp_path / "work" / "train.out")  # StdOut never written
    ingester = LogIngester(repository, roots=[], observer="polling")
    try:
        ingester.follow([run])
        assert _steps(repository, run) == {}

        ingester.reconfigure(
            roots=[str(root)], observer="polling", max_line_bytes=4096, patterns=[]
        )
        ingester.follow([run])
        assert _steps(repository, run) == {1: 0.5}
        registered = {path for _, path, _ in ingester.files}
        assert str(in_root) in registered

        with in_root.open("a") as handle:
            handle.write("loss=0.25 step=2\n")
        old_watcher = ingester.watcher
        ingester.reconfigure(
            roots=[str(root)], observer="inotify", max_line_bytes=4096, patterns=[]
        )
        assert ingester.watcher is not old_watcher and ingester.watcher.observer == "inotify"
        assert ingester.watcher.paths == registered
        ingester.ingest()  # every re-registered file counts as changed: nothing is missed
        assert _steps(repository, run) == {1: 0.5, 2: 0.25}

        with pytest.raises(ConfigError):
            ingester.reconfigure(roots=[], observer="polling", max_line_bytes=256, patterns=["("])
        assert ingester.roots == [str(root)] and ingester.max_line_bytes == 4096
        assert ingester.watcher.observer == "inotify"
    finally:
        ingester.close()
        repository.dispose()
