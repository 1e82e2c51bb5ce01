"""Building hpcsync's parts from settings, and the one-shot commands `sync` and `backfill`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

from hpcsync.config import Settings
from hpcsync.db.repository import Repository, masked_url
from hpcsync.errors import AlreadyRunning
from hpcsync.ingest import IngestStats, LogIngester, ended_runs
from hpcsync.leader import Leadership, make_leadership
from hpcsync.slurm import make_scheduler
from hpcsync.slurm.base import Scheduler
from hpcsync.sync import CycleStats, JobTracker, utc_now

log = logging.getLogger(__name__)


def open_repository(settings: Settings, *, migrate_in_child: bool = False) -> Repository:
    """Return a repository on the configured database, its schema created or migrated.

    `migrate_in_child` (the daemon) migrates from a short-lived process, keeping Alembic out of
    a process that runs for months.
    """
    url = settings.database_url
    if not settings.database.url:
        Path(settings.state_dir).mkdir(parents=True, exist_ok=True)
    repository = Repository.from_url(url, settings.database.connect_timeout)
    if repository.ensure_schema(in_child=migrate_in_child):
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


def build_ingester(
    settings: Settings, repository: Repository, on_change: Callable[[], None] | None = None
) -> LogIngester:
    """Return a log ingester for the configured roots and observer; raises ConfigError.

    `on_change` is called (from the inotify thread) when a file under inotify changes.
    """
    return LogIngester(
        repository,
        roots=settings.logs.roots,
        observer=settings.logs.observer,
        max_line_bytes=settings.logs.max_line_bytes,
        patterns=settings.logs.patterns,
        on_change=on_change,
    )


def leadership_for(settings: Settings, cluster: str) -> Leadership:
    """Return the lock that makes this process the one writer of `cluster` in the database."""
    return make_leadership(
        settings.database_url, settings.state_dir, cluster, settings.database.connect_timeout
    )


@contextmanager
def leading(settings: Settings, cluster: str) -> Iterator[None]:
    """Hold the cluster's lock for a one-shot command; raises AlreadyRunning if a daemon leads."""
    # sync and backfill write runs and events like the daemon: two writers could each add the
    # same state change's event, so a one-shot command refuses while a daemon leads.
    leadership = leadership_for(settings, cluster)
    try:
        if not leadership.acquire():
            raise AlreadyRunning(
                f"another hpcsync daemon leads {leadership.holder()}; stop it first "
                "(it already polls and reads logs)"
            )
        yield
    finally:
        leadership.release()


def follow_logs(ingester: LogIngester, tracker: JobTracker, *cycles: CycleStats) -> IngestStats:
    """Read the logs of the tracker's live runs and, one last time, of every ended run.

    An ended run is marked done only after that last read, so a crash between a run's end
    and its last read leaves it to the next call, whichever process makes it.
    """
    changed = [run for cycle in cycles for run, _ in cycle.changes]
    ended = {run.id: run for run in ended_runs(changed, tracker.live_runs)}
    for run in tracker.repository.runs_awaiting_logs(tracker.cluster):
        ended.setdefault(run.id, run)
    stats = ingester.follow(tracker.live_runs, list(ended.values()))
    tracker.repository.mark_logs_done([run_id for run_id in ended if run_id is not None])
    return stats


def sync_once(
    settings: Settings, scheduler: Scheduler | None = None
) -> tuple[CycleStats, IngestStats]:
    """Run one full cycle: catch up on missed jobs, poll Slurm, read every log; return what changed."""
    repository = open_repository(settings)
    ingester = build_ingester(settings, repository)
    try:
        tracker = build_tracker(settings, repository, scheduler)
        with leading(settings, tracker.cluster):
            tracker.load()
            stats = tracker.cycle()
            caught = tracker.catch_up(first_start(settings))
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

    Idempotent, but refuses (AlreadyRunning) while a daemon leads the cluster.
    `progress(done, total, so_far)` is called after each chunk.
    """
    repository = open_repository(settings)
    ingester = build_ingester(settings, repository)
    try:
        tracker = build_tracker(settings, repository)
        chunks = _chunks(since, until, BACKFILL_CHUNK)
        total = CycleStats()
        with leading(settings, tracker.cluster):
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


def first_start(settings: Settings) -> datetime | None:
    days = settings.slurm.catchup_days
    return utc_now() - timedelta(days=days) if days > 0 else None
