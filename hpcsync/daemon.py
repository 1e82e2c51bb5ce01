"""The one place that wires settings, Slurm, the database and the scheduler loop together."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import FrameType

from apscheduler.schedulers.background import BackgroundScheduler

from hpcsync.backoff import Backoff
from hpcsync.config import Settings, find_config, load_settings
from hpcsync.db.repository import Repository, masked_url
from hpcsync.errors import HpcsyncError, SchedulerUnavailable, StorageError
from hpcsync.ingest import IngestStats, LogIngester
from hpcsync.leader import FileLock, Leadership
from hpcsync.oneshot import (
    backfill,
    build_ingester,
    build_tracker,
    cluster_name,
    first_start,
    follow_logs,
    leadership_for,
    open_repository,
    open_scheduler,
    sync_once,
)
from hpcsync.slurm.base import Scheduler
from hpcsync.sync import CycleStats, JobTracker
from hpcsync.systemd import (
    Watchdog,
    differences,
    notify,
    reloading,
    set_log_level,
    stall_seconds,
    status,
    watchdog_period,
)
from hpcsync.usage_refresh import refresh_live_usage

log = logging.getLogger(__name__)

__all__ = [
    "Daemon",
    "backfill",
    "cluster_name",
    "open_repository",
    "open_scheduler",
    "sync_once",
]
"""The builders and one-shot commands live in hpcsync.oneshot; cli and views find them here."""

LOG_WAKE_SECONDS = 0.5
"""After an inotify event the log tick runs this much later; events until then join that read."""
RESTART_KEYS = ("database", "state_dir", "cluster_name")
"""Settings a reload does not change: the daemon keeps its database and cluster until restarted."""


@dataclass
class Daemon:
    """`hpcsync run`: polls on a schedule until SIGTERM or SIGINT; SIGHUP reloads the config.

    Only the leader of the cluster polls and writes; a standby (another daemon leads) retries the
    lock every poll interval. READY=1 follows the first tick as leader or standby alike: a standby
    is up, its schema checked, and takes over by itself.
    """

    settings: Settings
    scheduler: Scheduler | None = None
    config: str | None = None
    """The --config argument: SIGHUP reads `find_config(config)` again."""
    fixed_log_level: str | None = None
    """A --log-level given on the command line, which a reload does not override."""

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._reload_wanted = False
        self._cycle_lock = threading.Lock()
        self._tracker: JobTracker | None = None
        self._repository: Repository | None = None
        self._ingester: LogIngester | None = None
        self._jobs: BackgroundScheduler | None = None
        self._last_usage = float("-inf")
        self._leadership: Leadership | None = None
        self._leader = False
        self._standby_logged = False
        self._log_wake = threading.Lock()
        self._log_wake_due = False
        interval = self.settings.slurm.poll_interval
        self._backoff = Backoff(interval, self.settings.slurm.max_backoff)
        self._watchdog = Watchdog(
            watchdog_period(),
            stall_seconds(self.settings.slurm.poll_interval, self.settings.slurm.command_timeout),
        )

    def stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        """Ask the loop to finish the current cycle and exit."""
        if signum is not None:
            log.info("received %s, stopping", signal.Signals(signum).name)
        self._stop.set()
        self._wake.set()

    def request_reload(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        """Ask the main loop to re-read the config (the SIGHUP handler)."""
        if signum is not None:
            log.info("received %s, reloading the config", signal.Signals(signum).name)
        self._reload_wanted = True
        self._wake.set()

    def run(self) -> int:
        """Serve until stopped; return the exit code."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.stop)
        signal.signal(signal.SIGHUP, self.request_reload)
        notify(status("starting: opening the database"))
        lock = leadership_for(self.settings, self.settings.cluster_name)
        if isinstance(lock, FileLock):
            lock.acquire()  # SQLite: a second daemon on the file refuses to start
            self._leadership = lock
        self._repository = open_repository(self.settings, migrate_in_child=True)
        self._ingester = build_ingester(self.settings, self._repository, self._logs_changed)
        log.info(
            "hpcsync starting: database %s, poll every %.0f s%s",
            masked_url(self.settings.database_url),
            self.settings.slurm.poll_interval,
            f", watchdog {2 * self._watchdog.period:.0f} s" if self._watchdog.period else "",
        )
        notify(status("starting: first poll"))
        self.poll()
        self._jobs = BackgroundScheduler(timezone="UTC")
        for job_id, function, seconds in self._job_intervals():
            self._jobs.add_job(
                function,
                "interval",
                seconds=seconds,
                id=job_id,
                coalesce=True,
                max_instances=1,
                misfire_grace_time=None,
            )
        self._jobs.start()
        notify("READY=1")
        try:
            self._serve()
        finally:
            notify("STOPPING=1", status("stopping"))
            self._jobs.shutdown(wait=True)
            self._ingester.close()
            self._repository.dispose()
            if self._leadership is not None:
                self._leadership.release()
            log.info("hpcsync stopped")
        return 0

    def _serve(self) -> None:
        # Signals only set flags: the reload and the watchdog run here, in the main thread.
        while not self._stop.is_set():
            self._wake.wait(timeout=self._loop_seconds())
            self._wake.clear()
            if self._stop.is_set():
                return
            if self._reload_wanted:
                self._reload_wanted = False
                self.reload()
            self._watchdog.ping()

    def _loop_seconds(self) -> float:
        return min(5.0, self.settings.slurm.poll_interval, self._watchdog.period or 5.0)

    def _job_intervals(self) -> list[tuple[str, Callable[[], None], float]]:
        return [
            ("poll", self.poll, self.settings.slurm.poll_interval),
            ("logs", self.read_logs, self.settings.logs.poll_interval),
        ]

    def poll(self) -> None:
        """One scheduled tick: a poll cycle unless backing off; never raises."""
        if self._stop.is_set():
            return
        try:
            with self._cycle_lock:
                self._poll()
        finally:
            self._watchdog.tick()
            self._logs_read()  # a wake that came while the cycle held the lock

    def _poll(self) -> None:
        if not self._backoff.ready():
            return
        try:
            if not self._lead():
                return
            if self._tracker is None:
                assert self._repository is not None
                self._tracker = build_tracker(self.settings, self._repository, self.scheduler)
                self._tracker.load()
                stats = self._tracker.cycle()
                caught = self._tracker.catch_up(first_start(self.settings))
                if caught.changed:
                    log.info("caught up: %s", caught.summary())
                stats.changes.extend(caught.changes)
            else:
                stats = self._tracker.cycle()
        except (SchedulerUnavailable, StorageError) as exc:
            what = "Slurm" if isinstance(exc, SchedulerUnavailable) else "database"
            self._backoff.failed(what, exc)
            notify(status(f"{what} unavailable, retrying with backoff: {exc}"))
            if isinstance(exc, StorageError):
                self._tracker = None  # reload live runs from the database once it is back
            return
        except Exception:
            log.exception("poll cycle failed unexpectedly; retrying next tick")
            return
        self._backoff.succeeded("polling")
        ingested = self._follow(stats)
        log.info("%s; %s", stats.summary(), ingested.summary() if ingested else "logs not read")
        notify(status(f"polled {stats.jobs} jobs, {len(self._tracker.live_runs)} live runs"))
        self._refresh_usage()

    def _lead(self) -> bool:
        """Return True when this daemon leads (taking the lock if free); raises HpcsyncError."""
        if self._leadership is None:
            # The advisory lock is per cluster: ask Slurm for the name unless configured.
            cluster = cluster_name(self.settings, self.scheduler or open_scheduler(self.settings))
            self._leadership = leadership_for(self.settings, cluster)
        if self._leader:
            return self._still_leading()
        if not self._leadership.acquire():
            if not self._standby_logged:
                log.info("standby: another daemon leads %s", self._leadership.holder())
                self._standby_logged = True
            notify(status(f"standby: another daemon leads {self._leadership.holder()}"))
            self._backoff.succeeded("database")  # it answered: an outage, if any, is over
            return False
        log.info("leading %s", self._leadership.holder())
        self._leader = True
        self._standby_logged = False
        return True

    def _still_leading(self) -> bool:
        """Return True while the lock holds (PostgreSQL: its connection answers); else step down."""
        if self._leadership is not None and self._leadership.alive():
            return True
        self._step_down()
        return False

    def _step_down(self) -> None:
        """Stop writing: forget what the tracker and ingester hold; the next leader term reloads."""
        log.error("lost the lock of %s: stepping down to standby", self._leadership_name())
        self._leader = False
        self._tracker = None
        assert self._ingester is not None and self._repository is not None
        self._ingester.close()
        self._ingester = build_ingester(self.settings, self._repository, self._logs_changed)
        notify(status("standby: lost the leader lock"))

    def _leadership_name(self) -> str:
        return self._leadership.holder() if self._leadership is not None else "the database"

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

    def _logs_changed(self) -> None:
        """From the inotify thread: bring the log tick forward to LOG_WAKE_SECONDS from now."""
        with self._log_wake:
            if self._log_wake_due or self._jobs is None or self._stop.is_set():
                return
            self._log_wake_due = True
        due = datetime.now(UTC) + timedelta(seconds=LOG_WAKE_SECONDS)
        try:
            self._jobs.modify_job("logs", next_run_time=due)
        except Exception as exc:  # the scheduler is shutting down, or the job is gone
            log.debug("log tick not brought forward: %s", exc)
            with self._log_wake:
                self._log_wake_due = False

    def _logs_read(self) -> None:
        """After a read: allow the next wake, and wake now for events that came during it."""
        with self._log_wake:
            self._log_wake_due = False
        if self._ingester is not None and self._ingester.watcher.pending():
            self._logs_changed()

    def read_logs(self) -> None:
        """The log tick between polls: read the files that grew; never raises."""
        if self._stop.is_set() or self._ingester is None or not self._leader:
            return
        # A poll cycle reads the logs too; skipping here keeps a step-down from racing a read.
        if not self._cycle_lock.acquire(blocking=False):
            return
        try:
            if not self._still_leading():
                return
            stats = self._ingester.ingest()
        except HpcsyncError as exc:
            log.warning("reading logs failed, retrying next tick: %s", exc)
            return
        except Exception:
            log.exception("reading logs failed unexpectedly; retrying next tick")
            return
        finally:
            self._cycle_lock.release()
            self._logs_read()
        if stats.points:
            log.info("%s", stats.summary())

    def reload(self) -> bool:
        """Re-read the config and apply it between cycles; on any problem keep the running one."""
        notify(*reloading())
        try:
            path = find_config(self.config)
            try:
                new = load_settings(path)
                scheduler = self._new_scheduler(new)
                with self._between_cycles():
                    assert self._ingester is not None
                    self._ingester.reconfigure(
                        roots=new.logs.roots,
                        observer=new.logs.observer,
                        max_line_bytes=new.logs.max_line_bytes,
                        patterns=new.logs.patterns,
                    )
                    changes = self._apply(new, scheduler)
            except HpcsyncError as exc:
                log.error("reload failed, keeping the running config: %s", exc)
                return False
            log.info(
                "config reloaded from %s: %s",
                path or "defaults and environment",
                "; ".join(changes) or "nothing changed",
            )
            return True
        finally:
            notify("READY=1")

    @contextmanager
    def _between_cycles(self) -> Iterator[None]:
        # A long cycle may hold the lock: keep feeding the watchdog while waiting for it.
        while not self._cycle_lock.acquire(timeout=self._loop_seconds()):
            self._watchdog.ping()
        try:
            yield
        finally:
            self._cycle_lock.release()

    def _new_scheduler(self, new: Settings) -> Scheduler | None:
        """Return a Slurm backend for new settings when theirs differ; raises HpcsyncError."""
        if self.scheduler is not None:
            return None  # injected (tests): keep it
        old = self.settings.slurm
        if (new.slurm.backend, new.slurm.command_timeout) == (old.backend, old.command_timeout):
            return None
        return open_scheduler(new)

    def _apply(self, new: Settings, scheduler: Scheduler | None) -> list[str]:
        """Switch to new settings (the ingester is already reconfigured); return what changed."""
        old = self.settings
        changes = [
            f"{key} {before!r} -> {after!r}"
            for key, (before, after) in differences(old.model_dump(), new.model_dump()).items()
            if key.split(".")[0] not in RESTART_KEYS
        ]
        kept = {
            key: getattr(old, key) for key in RESTART_KEYS if getattr(new, key) != getattr(old, key)
        }
        for key in kept:
            log.warning("reload: %s changed; restart hpcsync to apply it", key)
        intervals = {job_id: seconds for job_id, _, seconds in self._job_intervals()}
        self.settings = new = new.model_copy(update=kept)
        if self.fixed_log_level is None:
            set_log_level(new.log_level)
        self._backoff.base = new.slurm.poll_interval
        self._backoff.ceiling = new.slurm.max_backoff
        self._watchdog.stall_seconds = stall_seconds(
            new.slurm.poll_interval, new.slurm.command_timeout
        )
        if self._tracker is not None:
            self._tracker.track_untagged = new.slurm.track_untagged
            if scheduler is not None:
                self._tracker.scheduler = scheduler
        for job_id, _, seconds in self._job_intervals():
            if self._jobs is not None and intervals[job_id] != seconds:
                self._jobs.reschedule_job(job_id, trigger="interval", seconds=seconds)
        return changes
