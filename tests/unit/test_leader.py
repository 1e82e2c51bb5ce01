"""Two daemons, one database: a file lock on SQLite, an advisory lock per cluster on PostgreSQL.

The daemons are real `python -m hpcsync run` subprocesses on fake Slurm programs; each daemon has
its own fake squeue that appends a timestamp to a marker file, so the test sees who polled when.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from test_daemon_notify import DEADLINE, DaemonProcess, NotifySocket, fake_slurm, write_config

from hpcsync.errors import AlreadyRunning
from hpcsync.leader import FileLock, lock_key, sqlite_lock_path

POLL = 3
"""Seconds between polls: failover must take at most two of them."""

StartOne = Callable[[Path, str], DaemonProcess]


def _env(config: Path, bin_dir: Path, notify_path: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HPCSYNC_", "NOTIFY_", "WATCHDOG_", "JOURNAL_"))
    }
    env.update(
        HPCSYNC_CONFIG=str(config),
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        NOTIFY_SOCKET=notify_path,
    )
    return env


@pytest.fixture
def start_one(tmp_path: Path) -> Iterator[StartOne]:
    """Return a function that starts a named daemon whose squeue marks `<name>.polls`."""
    started: list[DaemonProcess] = []
    sockets: list[NotifySocket] = []

    def start(config: Path, name: str) -> DaemonProcess:
        marker = tmp_path / f"{name}.polls"
        bin_dir = fake_slurm(tmp_path / f"bin-{name}", f"date +%s.%N >> {marker}\nexit 0")
        sock = NotifySocket()
        sockets.append(sock)
        daemon = DaemonProcess(_env(config, bin_dir, sock.path), sock)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()
    for sock in sockets:
        sock.close()


def _polls(tmp_path: Path, name: str) -> list[float]:
    marker = tmp_path / f"{name}.polls"
    return [float(line) for line in marker.read_text().split()] if marker.exists() else []


def _wait(condition: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def _one_shot(config: Path, bin_dir: Path, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hpcsync", command],
        env=_env(config, bin_dir, ""),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )


def test_lock_key_is_a_stable_signed_64_bit_int_per_cluster() -> None:
    assert lock_key("hpctest") == lock_key("hpctest")
    assert lock_key("hpctest") != lock_key("other")
    assert all(-(2**63) <= lock_key(name) < 2**63 for name in ("a", "hpctest", "ü" * 99))
    # The same in every Python run: a fixed digest, never hash() with its per-process seed.
    assert lock_key("hpctest") == int.from_bytes(
        bytes.fromhex(__import__("hashlib").sha256(b"hpcsync:hpctest").hexdigest()[:16]),
        "big",
        signed=True,
    )


def test_the_sqlite_lock_file_sits_beside_the_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    assert sqlite_lock_path(url, "/state") == tmp_path / "x.db.lock"
    assert sqlite_lock_path("sqlite://", str(tmp_path)) == tmp_path / "hpcsync.lock"
    first, second = FileLock(tmp_path / "x.lock"), FileLock(tmp_path / "x.lock")
    assert first.acquire()
    with pytest.raises(AlreadyRunning, match=rf"\(pid {os.getpid()}\).*x.lock is locked"):
        second.acquire()
    first.release()
    assert second.acquire() and second.alive()
    second.release()


def test_a_second_daemon_on_one_sqlite_file_refuses_to_start(
    tmp_path: Path, start_one: StartOne
) -> None:
    config = tmp_path / "config.toml"
    write_config(config, tmp_path, slurm="poll_interval = 1\n")
    first = start_one(config, "first")
    first.notify.wait_for("READY=1")

    second = start_one(config, "second")
    assert second.process.wait(timeout=DEADLINE) == 1
    second.kill()
    lock = tmp_path / "hpcsync.db.lock"
    message = f"hpcsync: another hpcsync daemon (pid {first.process.pid}) already uses this "
    errors = [line for line in second.lines if line.startswith("hpcsync:")]
    assert errors == [f"{message}database: {lock} is locked"], second.text()
    assert not _polls(tmp_path, "second")
    # The one-shot commands refuse too: they would write the same events.
    refused = _one_shot(config, tmp_path / "bin-second", "sync")
    assert refused.returncode == 1 and "is locked" in refused.stderr

    assert first.stop() == 0
    third = start_one(config, "third")
    third.notify.wait_for("READY=1")
    assert third.stop() == 0


@pytest.fixture
def pg_config(tmp_path: Path, make_postgres_database: Callable[[str], str]) -> tuple[Path, str]:
    """Return a config on a fresh PostgreSQL database for cluster `leadertest`, and its URL."""
    url = make_postgres_database("hpcsync_test_leader")
    config = tmp_path / "config.toml"
    write_config(
        config,
        tmp_path,
        top='cluster_name = "leadertest"\n',
        slurm=f"poll_interval = {POLL}\n",
        sections=f'[database]\nurl = "{url}"\n',
    )
    return config, url


def _lock_holders(url: str) -> list[int]:
    engine = create_engine(url)
    with engine.connect() as connection:
        pids = connection.execute(
            text(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
        ).scalars()
        found = list(pids)
    engine.dispose()
    return found


def test_two_daemons_on_postgresql_one_writes_and_the_standby_takes_over_after_kill_9(
    tmp_path: Path, start_one: StartOne, pg_config: tuple[Path, str]
) -> None:
    config, url = pg_config
    leader = start_one(config, "a")
    leader.wait_line("leading cluster leadertest")
    standby = start_one(config, "b")
    standby.wait_line("standby: another daemon leads cluster leadertest")
    standby.notify.wait_for("READY=1")  # a standby is ready: up, schema checked, waiting
    _wait(lambda: len(_polls(tmp_path, "a")) >= 4, "three more polls by the leader")
    assert not _polls(tmp_path, "b"), "the standby polled Slurm"
    assert len(_lock_holders(url)) == 1
    assert standby.text().count("standby: another daemon leads") == 1, "logged once, not per tick"
    refused = _one_shot(config, tmp_path / "bin-b", "sync")
    assert refused.returncode == 1
    assert "another hpcsync daemon leads cluster leadertest" in refused.stderr

    killed_at = time.time()
    leader.process.send_signal(signal.SIGKILL)
    leader.process.wait(timeout=DEADLINE)
    _wait(lambda: bool(_polls(tmp_path, "b")), "the standby's first poll")
    failover = _polls(tmp_path, "b")[0] - killed_at
    standby.wait_line("leading cluster leadertest")
    print(f"\nfailover after kill -9 of the leader: {failover:.2f} s (poll interval {POLL} s)")
    (tmp_path.parent / "failover_seconds").write_text(f"{failover:.2f}\n")
    assert failover <= 2 * POLL
    assert standby.stop() == 0


def test_a_leader_whose_lock_connection_is_terminated_steps_down(
    tmp_path: Path, start_one: StartOne, pg_config: tuple[Path, str]
) -> None:
    config, url = pg_config
    leader = start_one(config, "a")
    leader.wait_line("leading cluster leadertest")
    (holder,) = _lock_holders(url)

    engine = create_engine(url)
    with engine.connect() as connection:
        assert connection.execute(
            text("SELECT pg_terminate_backend(:pid)"), {"pid": holder}
        ).scalar()
    engine.dispose()
    line = leader.wait_line("stepping down to standby")
    assert "lost the lock of cluster leadertest" in leader.lines[line]
    # With no other daemon, it leads again from a new connection on a later tick.
    leader.wait_line("leading cluster leadertest", after=line)
    _wait(lambda: len(_lock_holders(url)) == 1, "a new lock holder")
    assert _lock_holders(url) != [holder]
    polls = len(_polls(tmp_path, "a"))
    _wait(lambda: len(_polls(tmp_path, "a")) > polls, "a poll after leading again")
    assert leader.stop() == 0
