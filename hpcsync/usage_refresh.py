"""Live CPU and memory of running runs: one sstat call for all of them, written into `runs`.

The daemon calls `refresh_live_usage` with the tracker's live runs at its own cadence, slower
than the poll (sstat asks every running job's slurmstepd). For each RUNNING run that sstat
reports:
- `max_rss_mb`: the largest MaxRSS of its running steps, never lowered by a later refresh;
- `cpu_efficiency`: CPU time of its running steps / (allocated CPUs x seconds since start),
  at most 1. Steps that already ended are gone from sstat, so this can undercount a job
  whose earlier steps did the work.
Final runs are not touched; when the job ends, sacct's MaxRSS (largest step) and
TotalCPU / (NCPUS x ElapsedRaw) replace both as the tracker saves the final record.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from hpcsync.db.metric_store import LiveUsageRow, update_live_usage
from hpcsync.db.repository import Repository
from hpcsync.models import JobState, Run
from hpcsync.slurm.usage import LiveUsage, live_usage

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
MIN_ELAPSED_SECONDS = 1.0
"""Below this many seconds since the start, an efficiency is noise and is not written."""


def utc_now() -> datetime:
    """Return the current time, timezone-aware UTC."""
    return datetime.now(UTC)


@dataclass
class UsageStats:
    """What one refresh asked, heard and wrote."""

    running: int = 0
    reported: int = 0
    written: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        """Return the one-line INFO summary."""
        return (
            f"live usage: {self.running} running jobs, {self.reported} reported by sstat, "
            f"{self.written} runs written, {self.seconds:.2f} s"
        )


def running_runs(runs: Sequence[Run]) -> list[Run]:
    """Return the stored runs whose job is RUNNING (the only ones sstat can report)."""
    return [run for run in runs if run.id is not None and run.job.state is JobState.RUNNING]


def live_usage_rows(
    runs: Sequence[Run], usage: Mapping[str, LiveUsage], now: datetime
) -> list[LiveUsageRow]:
    """Return the rows to write for the runs sstat reported (keyed by raw job id)."""
    rows: list[LiveUsageRow] = []
    for run in runs:
        found = usage.get(str(run.job.job_id_raw))
        if found is None or run.id is None:
            continue
        row = LiveUsageRow(run.id, found.max_rss_mb, cpu_efficiency(run, found, now))
        if row.max_rss_mb is not None or row.cpu_efficiency is not None:
            rows.append(row)
    return rows


def cpu_efficiency(run: Run, usage: LiveUsage, now: datetime) -> float | None:
    """Return CPU seconds / (allocated CPUs x seconds since start), at most 1; None if unknown."""
    job = run.job
    if usage.total_cpu_seconds is None or not job.num_cpus or job.started_at is None:
        return None
    elapsed = (now - job.started_at).total_seconds()
    if elapsed < MIN_ELAPSED_SECONDS:
        return None
    return min(1.0, max(0.0, usage.total_cpu_seconds / (job.num_cpus * elapsed)))


def refresh_live_usage(
    repository: Repository,
    runs: Sequence[Run],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
    sstat: str = "sstat",
    clock: Clock = utc_now,
) -> UsageStats:
    """Ask sstat once about the running runs and write their usage; return what happened.

    Raises SchedulerUnavailable when sstat fails and StorageError when the database does.
    """
    began = time.monotonic()
    running = running_runs(runs)
    stats = UsageStats(running=len(running))
    if running:
        usage = live_usage([run.job.job_id_raw for run in running], env, timeout, sstat)
        stats.reported = len(usage)
        rows = live_usage_rows(running, usage, clock())
        if rows:
            with repository.atomic() as connection:
                stats.written = update_live_usage(connection, rows)
    stats.seconds = time.monotonic() - began
    log.debug("%s", stats.summary())
    return stats
