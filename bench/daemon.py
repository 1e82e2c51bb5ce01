"""Start `hpcsync run` on a config of the benchmark's own, read its /proc figures, stop it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from bench.common import REPO

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def toml_value(value: object) -> str:
    """Return a TOML literal for a str, bool, number or list of str."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def write_config(path: Path, sections: Mapping[str, Mapping[str, object]]) -> Path:
    """Write a config file; the "" section holds the top-level keys."""
    lines = [f"{key} = {toml_value(value)}" for key, value in sections.get("", {}).items()]
    for name, values in sections.items():
        if name:
            lines.append(f"\n[{name}]")
            lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def start(config: Path, env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start `hpcsync run --config config`, its output to log."""
    with log.open("wb") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "hpcsync", "run", "--config", str(config)],
            cwd=REPO,
            env=dict(env),
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def stop(process: subprocess.Popen[bytes], timeout: float = 30) -> int | None:
    """Send SIGTERM and wait; kill it if it does not end in time. Return its exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def cpu_seconds(pid: int) -> tuple[float, float]:
    """Return (own, waited-for children's) user + system CPU seconds of a process."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    return (utime + stime) / CLOCK_TICKS, (cutime + cstime) / CLOCK_TICKS


def memory_mb(pid: int) -> dict[str, float]:
    """Return VmRSS and VmHWM (peak) of a process in MB."""
    values: dict[str, float] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return values


def wait_log(log: Path, text: str, timeout: float, process: subprocess.Popen[bytes]) -> bool:
    """Wait until the daemon's output contains `text`; False on timeout or if it exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.2)
    return False
