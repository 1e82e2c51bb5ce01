"""`hpcsync run` under a service manager: sd_notify readiness, watchdog pings, status, clean stop.

The daemon runs as a real subprocess with fake Slurm programs on PATH and NOTIFY_SOCKET naming a
datagram socket this test owns, as systemd would. Nothing here measures durations: every wait
has a generous deadline and asserts only what arrived, and in which order.
This module's harness (`DaemonProcess`, `start_daemon`) is shared by test_daemon_reload.py.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hpcsync.cli import setup_logging
from hpcsync.systemd import Watchdog, notify, status, watchdog_period

DEADLINE = 60.0
"""Seconds any one expected event may take on a loaded 2-core machine."""
STOP_DEADLINE = 30.0
"""Seconds SIGTERM may take to end the daemon: the current cycle finishes, nothing else."""

FAKE_SCONTROL = """#!/bin/sh
printf 'ClusterName             = fakecluster\\nSLURM_VERSION           = 22.05.8\\nAccountingStoreFlags    = job_comment\\n'
"""


def fake_slurm(directory: Path, squeue_body: str = "exit 0") -> Path:
    """Write fake scontrol, squeue and sacct into directory and return it."""
    directory.mkdir(exist_ok=True)
    for name, body in (
        ("scontrol", FAKE_SCONTROL),
        ("squeue", f"#!/bin/sh\n{squeue_body}\n"),
        ("sacct", "#!/bin/sh\nexit 0\n"),
        ("sstat", "#!/bin/sh\nexit 0\n"),
    ):
        path = directory / name
        path.write_text(body)
        path.chmod(0o755)
    return directory


def write_config(
    path: Path, state_dir: Path, *, top: str = "", slurm: str = "", sections: str = ""
) -> None:
    """Write a daemon config on the fake Slurm: top-level keys, [slurm] keys, further sections."""
    path.write_text(
        f'state_dir = "{state_dir}"\n{top}'
        f'[slurm]\nbackend = "cli"\ncatchup_days = 0\nusage_interval = 0\n{slurm}{sections}'
    )


class NotifySocket:
    """The service manager's end of sd_notify: a bound AF_UNIX datagram socket."""

    def __init__(self) -> None:
        # AF_UNIX paths are limited to 107 bytes; pytest's tmp_path can be longer.
        self.directory = tempfile.mkdtemp(prefix="hpcsync-notify-")
        self.path = os.path.join(self.directory, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[list[str]] = []

    def receive(self, timeout: float) -> list[str] | None:
        """Return the fields of the next datagram, or None if none came within timeout."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return None
        fields = data.decode().split("\n")
        self.messages.append(fields)
        return fields

    def wait_for(self, field: Callable[[str], bool] | str, count: int = 1) -> None:
        """Receive until `count` datagrams (in all) carried a matching field; fail at the deadline."""
        match = field if callable(field) else field.__eq__
        deadline = time.monotonic() + DEADLINE
        while self.count(match) < count:
            left = deadline - time.monotonic()
            if left <= 0 or self.receive(left) is None:
                pytest.fail(f"no {count}x {field!r} over NOTIFY_SOCKET; got {self.messages}")

    def count(self, match: Callable[[str], bool]) -> int:
        """Return how many datagrams so far carried a matching field."""
        return sum(any(match(f) for f in fields) for fields in self.messages)

    def fields(self) -> list[str]:
        """Return every field received so far, in order."""
        return [f for fields in self.messages for f in fields]

    def drain(self) -> None:
        """Receive what is already queued."""
        while self.receive(0.2) is not None:
            pass

    def close(self) -> None:
        """Close and remove the socket."""
        self.sock.close()
        shutil.rmtree(self.directory, ignore_errors=True)


class DaemonProcess:
    """`python -m hpcsync run` in a subprocess, its stderr collected line by line."""

    def __init__(self, env: dict[str, str], notify_socket: NotifySocket) -> None:
        self.notify = notify_socket
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "hpcsync", "run"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_line(self, text: str, after: int = 0) -> int:
        """Return the index of the first stderr line from `after` on containing text."""
        deadline = time.monotonic() + DEADLINE
        with self._changed:
            while True:
                for index in range(after, len(self.lines)):
                    if text in self.lines[index]:
                        return index
                left = deadline - time.monotonic()
                if left <= 0 or (self.process.poll() is not None and not self._reader.is_alive()):
                    pytest.fail(f"no line with {text!r} on stderr:\n" + "\n".join(self.lines))
                self._changed.wait(min(left, 1.0))

    def signal(self, signum: signal.Signals) -> None:
        """Send a signal to the daemon."""
        self.process.send_signal(signum)

    def stop(self) -> int:
        """SIGTERM the daemon and return its exit code (it must exit within seconds)."""
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=STOP_DEADLINE)
        self._reader.join(timeout=DEADLINE)
        return code

    def text(self) -> str:
        """Return everything the daemon wrote to stderr so far."""
        with self._changed:
            return "\n".join(self.lines)

    def kill(self) -> None:
        """Kill the daemon if it still runs."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=DEADLINE)
        if self.process.stderr is not None:
            self._reader.join(timeout=DEADLINE)
            self.process.stderr.close()


StartDaemon = Callable[..., DaemonProcess]


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[StartDaemon]:
    """Return a function that starts `hpcsync run` with fake Slurm and a notify socket."""
    started: list[DaemonProcess] = []
    sockets: list[NotifySocket] = []

    def start(config: Path, **extra_env: str) -> DaemonProcess:
        bin_dir = fake_slurm(tmp_path / "bin")
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("HPCSYNC_", "NOTIFY_", "WATCHDOG_", "JOURNAL_"))
        }
        notify_socket = NotifySocket()
        sockets.append(notify_socket)
        env.update(
            HPCSYNC_CONFIG=str(config),
            PATH=f"{bin_dir}:{os.environ['PATH']}",
            NOTIFY_SOCKET=notify_socket.path,
            **extra_env,
        )
        daemon = DaemonProcess(env, notify_socket)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()
    for notify_socket in sockets:
        notify_socket.close()


def test_ready_then_regular_watchdog_pings_then_stopping_on_sigterm(
    tmp_path: Path, start_daemon: StartDaemon
) -> None:
    config = tmp_path / "config.toml"
    write_config(config, tmp_path, slurm="poll_interval = 1\n")
    daemon = start_daemon(config, WATCHDOG_USEC="2000000")
    sock = daemon.notify

    sock.wait_for("READY=1")
    sock.wait_for("WATCHDOG=1", count=3)
    sock.wait_for(lambda f: f.startswith("STATUS=polled 0 jobs, 0 live runs"))
    fields = sock.fields()
    assert fields.index("READY=1") < fields.index("WATCHDOG=1")
    assert "STOPPING=1" not in fields

    assert daemon.stop() == 0
    sock.drain()
    assert "STOPPING=1" in sock.fields()
    assert "hpcsync stopped" in daemon.text()
    assert "poll every 1 s, watchdog 2 s" in daemon.text()


def test_no_watchdog_pings_unless_asked(tmp_path: Path, start_daemon: StartDaemon) -> None:
    config = tmp_path / "config.toml"
    write_config(config, tmp_path, slurm="poll_interval = 1\n")
    daemon = start_daemon(config)
    sock = daemon.notify
    sock.wait_for("READY=1")
    # Three polls mean the main loop went round at least twice, each time free to ping.
    sock.wait_for(lambda f: f.startswith("STATUS=polled"), count=3)
    assert daemon.stop() == 0
    sock.drain()
    fields = sock.fields()
    assert "WATCHDOG=1" not in fields
    assert "STOPPING=1" in fields and "STATUS=stopping" in fields


def test_watchdog_period_is_half_of_watchdog_usec_and_only_for_this_process() -> None:
    assert watchdog_period({"WATCHDOG_USEC": "2000000"}) == 1.0
    assert watchdog_period({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": "42"}, pid=42) == 60.0
    assert watchdog_period({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": "41"}, pid=42) is None
    assert watchdog_period({}) is None
    assert watchdog_period({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_period({"WATCHDOG_USEC": "soon"}) is None


@pytest.fixture
def notify_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    """Return a notify socket that this process's notify() sends to."""
    sock = NotifySocket()
    monkeypatch.setenv("NOTIFY_SOCKET", sock.path)
    yield sock
    sock.close()


def test_the_watchdog_is_fed_only_while_ticks_finish(
    notify_socket: NotifySocket, caplog: pytest.LogCaptureFixture
) -> None:
    now = [100.0]
    watchdog = Watchdog(period=1.0, stall_seconds=60.0, monotonic=lambda: now[0])
    assert watchdog.ping()
    now[0] += 59
    assert watchdog.ping()
    now[0] += 2
    with caplog.at_level(logging.WARNING, logger="hpcsync.systemd"):
        assert not watchdog.ping()
        assert not watchdog.ping()
        watchdog.tick()
        assert watchdog.ping()
    assert [r.levelname for r in caplog.records] == ["ERROR", "WARNING"]
    assert "no poll tick has finished for 61 s" in caplog.records[0].getMessage()
    notify_socket.wait_for("WATCHDOG=1", count=3)
    assert watchdog.period is not None and not Watchdog(None, 60.0).ping()


def test_notify_sends_one_datagram_and_status_fits_one_line(notify_socket: NotifySocket) -> None:
    assert notify("READY=1", status("polled 3 jobs,\n1 live run"))
    notify_socket.wait_for("READY=1")
    assert notify_socket.messages == [["READY=1", "STATUS=polled 3 jobs, 1 live run"]]
    assert len(status("x" * 1000)) == len("STATUS=") + 200


def test_notify_without_a_socket_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not notify("READY=1")
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/notify")
    assert not notify("READY=1")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put the root logger's handlers and level back after a test that calls setup_logging."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _log_a_failure() -> None:
    log = logging.getLogger("hpcsync.test")
    log.info("database postgresql+psycopg://hpcsync:s3cr:et@db/tracking ready")
    try:
        raise ValueError("cannot connect to postgresql://u:pw@127.0.0.1:1/x")
    except ValueError:
        log.exception("job 1234: cycle failed")


def test_journald_lines_carry_their_priority_on_every_line_and_no_password(
    restore_logging: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    setup_logging("INFO")
    _log_a_failure()
    lines = capsys.readouterr().err.splitlines()
    assert (
        lines[0] == "<6>hpcsync.test: database postgresql+psycopg://hpcsync:***@db/tracking ready"
    )
    assert lines[1] == "<3>hpcsync.test: job 1234: cycle failed"
    assert lines[2] == "<3>Traceback (most recent call last):"
    assert lines[-1] == "<3>ValueError: cannot connect to postgresql://u:***@127.0.0.1:1/x"
    assert all(line.startswith(("<6>", "<3>")) for line in lines)


def test_plain_lines_elsewhere_without_a_password(
    restore_logging: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    setup_logging("INFO")
    _log_a_failure()
    err = capsys.readouterr().err
    assert "s3cr" not in err and ":pw@" not in err and "<3>" not in err
    assert " INFO hpcsync.test: database postgresql+psycopg://hpcsync:***@db/tracking ready" in err
