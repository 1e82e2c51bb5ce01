"""The service manager's side channel: sd_notify datagrams and the watchdog's health rule.

The protocol is sd_notify(3): newline-separated `KEY=value` fields in one datagram to the
AF_UNIX socket named by NOTIFY_SOCKET (`@name` is an abstract socket). Without NOTIFY_SOCKET
every call does nothing, so the same code runs in a terminal, under `systemd --user` and in tests.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger(__name__)

MAX_STATUS = 200
"""Longest STATUS= text sent; `systemctl status` shows one line."""


def notify(*fields: str) -> bool:
    """Send the fields as one sd_notify datagram when NOTIFY_SOCKET is set; return whether it was."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or not fields:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    message = "\n".join(fields)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode("utf-8", "replace"))
    except OSError as exc:
        log.debug("sd_notify %r failed: %s", message, exc)
        return False
    return True


def status(text: str) -> str:
    """Return a STATUS= field for `systemctl status`, on one line and cut to MAX_STATUS characters."""
    line = " ".join(text.split())
    if len(line) > MAX_STATUS:
        line = line[: MAX_STATUS - 1] + "…"
    return f"STATUS={line}"


def reloading() -> tuple[str, str]:
    """Return the fields that announce a reload (MONOTONIC_USEC is required by Type=notify-reload)."""
    return "RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"


def watchdog_period(
    environ: Mapping[str, str] | None = None, pid: int | None = None
) -> float | None:
    """Return the seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None if not asked."""
    environ = os.environ if environ is None else environ
    usec = environ.get("WATCHDOG_USEC", "")
    owner = environ.get("WATCHDOG_PID", "")
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None  # the watchdog is another process's (we were started by it)
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None


class Watchdog:
    """Pings systemd's watchdog only while the scheduler loop keeps finishing its ticks."""

    def __init__(
        self,
        period: float | None,
        stall_seconds: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.period = period
        self.stall_seconds = stall_seconds
        self.monotonic = monotonic
        self._last_tick = monotonic()
        self._stalled = False

    def tick(self) -> None:
        """Record that a scheduled tick finished (whatever its outcome)."""
        self._last_tick = self.monotonic()

    def healthy(self) -> bool:
        """True when a tick finished within `stall_seconds`."""
        return self.monotonic() - self._last_tick < self.stall_seconds

    def ping(self) -> bool:
        """Send WATCHDOG=1 if the watchdog is on and the loop is healthy; return whether sent."""
        if self.period is None:
            return False
        if not self.healthy():
            if not self._stalled:
                self._stalled = True
                log.error(
                    "no poll tick has finished for %.0f s; no longer feeding the watchdog",
                    self.monotonic() - self._last_tick,
                )
            return False
        if self._stalled:
            self._stalled = False
            log.warning("poll ticks finish again; feeding the watchdog")
        return notify("WATCHDOG=1")


def stall_seconds(poll_interval: float, command_timeout: float) -> float:
    """Return how long without a finished poll tick counts as a hung loop (no more WATCHDOG=1)."""
    # A healthy tick ends at most a poll interval and a few Slurm calls (each bounded) late.
    return 2 * poll_interval + 4 * command_timeout + 60


def set_log_level(level: str) -> None:
    """Set the level of hpcsync's own lines (a reload); chatty libraries stay at WARNING or above."""
    root = logging.getLogger()
    root.setLevel(level)
    for name in ("apscheduler", "alembic"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


def differences(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Return {dotted key: (old, new)} for every value that differs between two nested dicts."""
    old, new = _flatten(before), _flatten(after)
    return {
        key: (old.get(key), new.get(key))
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key)
    }


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
