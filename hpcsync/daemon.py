"""The one place that wires settings, Slurm, the database and the scheduler loop together."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import FrameType

from apscheduler.schedulers.background import BackgroundScheduler

from hpcsync.config import Settings
from hpcsync.db.repository import Repository, masked_url
from hpcsync.errors import HpcsyncError, SchedulerUnavailable, StorageError
from hpcsync.ingest import IngestStats, LogIngester, ended_runs
from hpcsync.slurm import make_scheduler
from hpcsync.slurm.base import Scheduler
from hpcsync.sync import CycleStats, JobTracker, utc_now
from hpcsync.usage_refresh import refresh_live_usage

log = logging.getLogger(__name__)


def open_repository(settings: Settings) -> Repository:
    """Return a repository on the configured database, its schema created or migrated."""
    url = settings.database_url
    if not settings.database.url:
        Path(settings.state_dir).mkdir(parents=True, exist_ok=True)
    repository = Repository.from_url(url, settings.database.connect_timeout)
    if repository.ensure_schema():
        log.info("database %s: schema created or migrated", masked_url(url))
    return repository


def open_scheduler(settings: Settings) -> Scheduler:
    """Return the configured Slurm backend."""
    return make_scheduler(settings.slurm.backend, timeout=settings.slurm.command_timeout)


def cluster_name(settings: Settings, scheduler: Scheduler) -> str:
    """Return the configured cluster name, else Slurm's ClusterName."""
    return settings.cluster_name or scheduler.cluster_name()


def build_tracker(
    settings: Settings, repository: Repository, scheduler: Scheduler | None = None
) -> JobTracker:
    """Return a job tracker for the configured cluster."""
    scheduler = scheduler or open_scheduler(settings)
    return JobTracker(
        scheduler,
        repository,
        cluster_name(settings, scheduler),
        track_untagged=settings.slurm.track_untagged,
    )


def build_ingester(settings: Settings, repository: Repository) -> LogIngester:
    """Return a log ingester for the configured roots and observer; raises ConfigError."""
    return LogIngester(
        repository,
        roots=settings.logs.roots,
        observer=settings.logs.observer,
        max_line_bytes=settings.logs.max_line_bytes,
        patterns=settings.logs.patterns,
    )


def follow_logs(ingester: LogIngester, tracker: JobTracker, *cycles: CycleStats) -> IngestStats:
    """Read the logs of the tracker's live runs and, one last time, of runs these cycles ended."""
    changed = [run for cycle in cycles for run, _ in cycle.changes]
    return ingester.follow(tracker.live_runs, ended_runs(changed, tracker.live_runs))


def sync_once(
    settings: Settings, scheduler: Scheduler | None = None
) -> tuple[CycleStats, IngestStats]:
    """Run one full cycle: catch up on missed jobs, poll Slurm, read every log; return what changed."""
    repository = open_repository(settings)
    ingester = build_ingester(settings, repository)
    try:
        tracker = build_tracker(settings, repository, scheduler)
        tracker.load()
        stats = tracker.cycle()
        caught = tracker.catch_up(_first_start(settings))
        ingested = follow_logs(ingester, tracker, caught, stats)
        stats.new += caught.new
        stats.changed += caught.changed
        return stats, ingested
    finally:
        ingester.close()
        repository.dispose()


BACKFILL_CHUNK = timedelta(days=1)


def backfill(
    settings: Settings,
    since: datetime,
    until: datetime,
    progress: Callable[[int, int, CycleStats], None] | None = None,
) -> CycleStats:
    """Import every tracked job that sacct knows in [since, until], a day per sacct call.

    Idempotent with the daemon. `progress(done, total, so_far)` is called after each chunk.
    """
    repository = open_repository(settings)
    ingester = build_ingester(settings, repository)
    try:
        tracker = build_tracker(settings, repository)
        chunks = _chunks(since, until, BACKFILL_CHUNK)
        total = CycleStats()
        for number, (start, end) in enumerate(chunks, 1):
            stats = tracker.import_window(start, end)
            for name in ("jobs", "tracked", "changed", "new", "events", "history"):
                setattr(total, name, getattr(total, name) + getattr(stats, name))
            total.changes.extend(stats.changes)
            if progress is not None:
                progress(number, len(chunks), total)
        # Runs that ended get their logs read once, as the daemon would have.
        follow_logs(ingester, tracker, total)
        return total
    finally:
        ingester.close()
        repository.dispose()


def _chunks(start: datetime, end: datetime, size: timedelta) -> list[tuple[datetime, datetime]]:
    windows = []
    while start < end:
        windows.append((start, min(start + size, end)))
        start += size
    return windows or [(start, end)]


def _first_start(settings: Settings) -> datetime | None:
    days = settings.slurm.catchup_days
    return utc_now() - timedelta(days=days) if days > 0 else None


class Backoff:
    """Exponential backoff between failing attempts, logged once per outage."""

    def __init__(
        self, base: float, ceiling: float, monotonic: Callable[[], float] = time.monotonic
    ):
        self.base = base
        self.ceiling = ceiling
        self.monotonic = monotonic
        self.failures = 0
        self.failing_since: float | None = None
        self._next_try = 0.0

    def ready(self) -> bool:
        """True when an attempt is due."""
        return self.monotonic() >= self._next_try

    def failed(self, what: str, error: HpcsyncError) -> None:
        """Record a failure; the first of an outage logs one ERROR line."""
        now = self.monotonic()
        self.failures += 1
        delay = min(self.ceiling, self.base * 2 ** (self.failures - 1))
        self._next_try = now + delay
        if self.failing_since is None:
            self.failing_since = now
            log.error("%s: %s; retrying with backoff up to %.0f s", what, error, self.ceiling)
        else:
            log.debug("%s still failing (%d tries): %s", what, self.failures, error)

    def succeeded(self, what: str) -> None:
        """Record a success; the end of an outage logs one line."""
        if self.failing_since is not None:
            log.warning(
                "%s recovered after %.0f s and %d failed tries",
                what,
                self.monotonic() - self.failing_since,
                self.failures,
            )
        self.failures = 0
        self.failing_since = None
        self._next_try = 0.0


def notify(message: str) -> None:
    """Send an sd_notify message when systemd asked for one (NOTIFY_SOCKET); else do nothing."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.debug("sd_notify %r failed: %s", message, exc)


@dataclass
class Daemon:
    """`hpcsync run`: polls on a schedule until SIGTERM or SIGINT."""

    settings: Settings
    scheduler: Scheduler | None = None

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._last_cycle_end = time.monotonic()
        self._tracker: JobTracker | None = None
        self._repository: Repository | None = None
        self._ingester: LogIngester | None = None
        self._last_usage = float("-inf")
        interval = self.settings.slurm.poll_interval
        self._backoff = Backoff(interval, self.settings.slurm.max_backoff)

    def stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        """Ask the loop to finish the current cycle and exit."""
        if signum is not None:
            log.info("received %s, stopping", signal.Signals(signum).name)
        self._stop.set()

    def run(self) -> int:
        """Serve until stopped; return the exit code."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.stop)
        self._repository = open_repository(self.settings)
        self._ingester = build_ingester(self.settings, self._repository)
        log.info(
            "hpcsync starting: database %s, poll every %.0f s",
            masked_url(self.settings.database_url),
            self.settings.slurm.poll_interval,
        )
        self.poll()
        scheduler = BackgroundScheduler(timezone="UTC")
        scheduler.add_job(
            self.poll,
            "interval",
            seconds=self.settings.slurm.poll_interval,
            id="poll",
            coalesce=True,
            max_instances=1,
            misfire_grace_time=None,
        )
        scheduler.add_job(
            self.read_logs,
            "interval",
            seconds=self.settings.logs.poll_interval,
            id="logs",
            coalesce=True,
            max_instances=1,
            misfire_grace_time=None,
        )
        scheduler.start()
        notify("READY=1")
        try:
            while not self._stop.wait(timeout=min(5.0, self.settings.slurm.poll_interval)):
                self._watchdog()
        finally:
            notify("STOPPING=1")
            scheduler.shutdown(wait=True)
            self._ingester.close()
            self._repository.dispose()
            log.info("hpcsync stopped")
        return 0

    def poll(self) -> None:
        """One scheduled tick: a poll cycle unless backing off; never raises."""
        if self._stop.is_set() or not self._backoff.ready():
            return
        try:
            if self._tracker is None:
                assert self._repository is not None
                self._tracker = build_tracker(self.settings, self._repository, self.scheduler)
                self._tracker.load()
                stats = self._tracker.cycle()
                caught = self._tracker.catch_up(_first_start(self.settings))
                if caught.changed:
                    log.info("caught up: %s", caught.summary())
                stats.changes.extend(caught.changes)
            else:
                stats = self._tracker.cycle()
        except (SchedulerUnavailable, StorageError) as exc:
            what = "Slurm" if isinstance(exc, SchedulerUnavailable) else "database"
            self._backoff.failed(what, exc)
            if isinstance(exc, StorageError):
                self._tracker = None  # reload live runs from the database once it is back
            return
        except Exception:
            log.exception("poll cycle failed unexpectedly; retrying next tick")
            return
        self._backoff.succeeded("polling")
        self._last_cycle_end = time.monotonic()
        ingested = self._follow(stats)
        log.info("%s; %s", stats.summary(), ingested.summary() if ingested else "logs not read")
        self._refresh_usage()

    def _refresh_usage(self) -> None:
        # Live CPU and memory come from one sstat call, at a slower cadence than the poll.
        interval = self.settings.slurm.usage_interval
        if interval <= 0 or time.monotonic() - self._last_usage < interval:
            return
        assert self._tracker is not None and self._repository is not None
        self._last_usage = time.monotonic()
        try:
            stats = refresh_live_usage(
                self._repository,
                self._tracker.live_runs,
                timeout=self.settings.slurm.command_timeout,
            )
        except HpcsyncError as exc:
            log.warning("live usage (sstat) failed, retrying in %.0f s: %s", interval, exc)
            return
        if stats.written:
            log.info("%s", stats.summary())

    def _follow(self, stats: CycleStats) -> IngestStats | None:
        assert self._ingester is not None and self._tracker is not None
        try:
            return follow_logs(self._ingester, self._tracker, stats)
        except HpcsyncError as exc:
            log.warning("reading logs failed, retrying next tick: %s", exc)
            return None

    def read_logs(self) -> None:
        """The log tick between polls: read the files that grew; never raises."""
        if self._stop.is_set() or self._ingester is None:
            return
        try:
            stats = self._ingester.ingest()
        except HpcsyncError as exc:
            log.warning("reading logs failed, retrying next tick: %s", exc)
            return
        except Exception:
            log.exception("reading logs failed unexpectedly; retrying next tick")
            return
        if stats.points:
            log.info("%s", stats.summary())

    def _watchdog(self) -> None:
        # Only a loop that finished a cycle recently tells systemd it is alive.
        limit = max(3 * self.settings.slurm.poll_interval, self._backoff.ceiling + 60)
        if time.monotonic() - self._last_cycle_end < limit:
            notify("WATCHDOG=1")
