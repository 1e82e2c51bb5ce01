"""The poll cycle: one squeue snapshot, a diff against the live runs, one batched sacct call."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from hpcsync.db.repository import Repository
from hpcsync.errors import SchedulerUnavailable
from hpcsync.models import Job, Run, RunEvent
from hpcsync.slurm.base import Scheduler
from hpcsync.tracking import Tag, is_placeholder, observe, same_job, tag_for

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
LAST_SEEN = "last_seen"
LAST_SEEN_EVERY = timedelta(minutes=5)
CATCH_UP_MARGIN = timedelta(minutes=10)


def utc_now() -> datetime:
    """Return the current time, timezone-aware UTC."""
    return datetime.now(UTC)


@dataclass
class CycleStats:
    """What one cycle saw and wrote."""

    jobs: int = 0
    tracked: int = 0
    changed: int = 0
    new: int = 0
    events: int = 0
    history: int = 0
    seconds: float = 0.0
    changes: list[tuple[Run, list[RunEvent]]] = field(default_factory=list)

    def summary(self) -> str:
        """Return the one-line INFO summary."""
        return (
            f"polled {self.jobs} jobs ({self.tracked} tracked), {self.changed} changed, "
            f"{self.new} new, {self.history} from sacct, {self.seconds:.2f} s"
        )


class JobTracker:
    """Keeps the runs of one cluster in step with Slurm; only changed runs are written."""

    def __init__(
        self,
        scheduler: Scheduler,
        repository: Repository,
        cluster: str,
        *,
        track_untagged: bool = False,
        clock: Clock = utc_now,
        final_attempts: int = 20,
    ) -> None:
        self.scheduler = scheduler
        self.repository = repository
        self.cluster = cluster
        self.track_untagged = track_untagged
        self.clock = clock
        self.final_attempts = final_attempts
        self._live: dict[str, Run] = {}
        self._settled: set[tuple[str, datetime | None, int]] = set()
        # squeue jobs that changed nothing last cycle, with the live run they were applied to:
        # the same (immutable) Job against the same Run gives the same nothing again.
        self._quiet: dict[str, tuple[Job, Run]] = {}
        self._attempts: dict[str, int] = {}
        self._last_seen_written: datetime | None = None
        self._last_seen: datetime | None = None
        self._loaded = False

    @property
    def live_runs(self) -> list[Run]:
        """Return the runs not yet final, as the tracker holds them."""
        return list(self._live.values())

    def load(self) -> None:
        """Load the live runs, and when the cluster was last seen, from the database."""
        self._live = {run.job.job_id: run for run in self.repository.live_runs(self.cluster)}
        stored = self.repository.get_state(self.cluster, LAST_SEEN)
        self._last_seen = datetime.fromisoformat(stored) if stored else None
        self._loaded = True
        log.debug("loaded %d live runs of cluster %s", len(self._live), self.cluster)

    def catch_up(self, default_since: datetime | None = None) -> CycleStats:
        """Import jobs that ran since the cluster was last seen at load (or since `default_since`).

        Call it after the first cycle: jobs still in squeue then keep what only squeue reports.
        """
        if not self._loaded:
            self.load()
        last_seen = self._last_seen
        since = last_seen - CATCH_UP_MARGIN if last_seen else default_since
        if since is None:
            return CycleStats()
        return self.import_window(since, self.clock())

    def import_window(self, start: datetime, end: datetime) -> CycleStats:
        """Record every tracked job that sacct knows in [start, end]; idempotent."""
        if not self._loaded:
            self.load()
        began = time.monotonic()
        stats = CycleStats()
        records = self.scheduler.jobs_between(start, end)
        stats.jobs = stats.history = len(records)
        self._apply(records, from_accounting=True, stats=stats)
        stats.seconds = time.monotonic() - began
        return stats

    def cycle(self) -> CycleStats:
        """Poll once: squeue for every job, then one sacct call for jobs that ended or vanished."""
        if not self._loaded:
            self.load()
        began = time.monotonic()
        stats = CycleStats()
        jobs = self.scheduler.list_jobs()
        stats.jobs = len(jobs)
        visible = {job.job_id for job in jobs}
        self._settled = {key for key in self._settled if key[0] in visible}
        quiet, self._quiet = self._quiet, {}
        fresh = [job for job in jobs if not self._still_quiet(job, quiet)]
        stats.tracked += len(jobs) - len(fresh)
        self._apply(fresh, from_accounting=False, stats=stats)

        wanted = [
            job_id
            for job_id, run in self._live.items()
            if job_id not in visible or run.job.state.is_terminal
        ]
        if wanted:
            try:
                records = self.scheduler.job_history(wanted)
            except SchedulerUnavailable as exc:
                log.warning("sacct failed, final states wait for the next cycle: %s", exc)
            else:
                stats.history = len(records)
                self._apply(records, from_accounting=True, stats=stats)
                self._give_up_on([job_id for job_id in wanted if job_id in self._live], stats)
        self._note_seen()
        stats.seconds = time.monotonic() - began
        return stats

    def _still_quiet(self, job: Job, quiet: dict[str, tuple[Job, Run]]) -> bool:
        """True for the very Job object that changed nothing last cycle, its run unchanged."""
        last = quiet.get(job.job_id)
        if last is None or last[0] is not job or self._live.get(job.job_id) is not last[1]:
            return False
        self._quiet[job.job_id] = last
        return True

    def _apply(self, jobs: Iterable[Job], *, from_accounting: bool, stats: CycleStats) -> None:
        now = self.clock()
        candidates: list[tuple[Job, Tag | None]] = []
        for job in jobs:
            if _settle_key(job) in self._settled:
                continue
            if from_accounting and is_placeholder(job):
                continue
            live = self._live.get(job.job_id)
            if live is not None and same_job(live, job):
                candidates.append((job, None))
                continue
            tag = tag_for(job, self.track_untagged)
            if tag is not None:
                candidates.append((job, tag))
        stats.tracked += len(candidates)
        unknown = [job.job_id for job, _ in candidates if job.job_id not in self._live]
        stored: dict[str, list[Run]] = {}
        for run in self.repository.runs_for_jobs(self.cluster, unknown):
            stored.setdefault(run.job.job_id, []).append(run)

        changes: list[tuple[Run, bool, list[RunEvent]]] = []
        for job, tag in candidates:
            previous = self._previous(job, stored.get(job.job_id, ()), from_accounting)
            if (
                previous is not None
                and self._is_final(previous)
                and (job.restarts or 0) <= previous.restarts
            ):
                self._settled.add(_settle_key(job))
                continue
            if previous is None and tag is None:
                continue
            run, events = observe(previous, job, tag, self.cluster, now)
            # Only accounting's own terminal record is final: it carries the exit code.
            final = from_accounting and job.state.is_terminal and run.job.state.is_terminal
            if run == previous and not final:
                if not from_accounting and previous is self._live.get(job.job_id):
                    self._quiet[job.job_id] = (job, previous)
                continue
            changes.append((run, final, events))
        if not changes:
            return
        saved = self.repository.save_runs(changes, now)
        for run, (_, final, events) in zip(saved, changes, strict=True):
            stats.changed += 1
            stats.events += len(events)
            stats.changes.append((run, events))
            if run.job.job_id not in self._live:
                stats.new += 1
            for event in events:
                log.info(
                    "job %s (%s): %s -> %s%s",
                    run.job.job_id,
                    run.experiment,
                    event.from_state or "new",
                    event.to_state,
                    f" ({event.reason})" if event.reason else "",
                )
            if final:
                self._live.pop(run.job.job_id, None)
                self._attempts.pop(run.job.job_id, None)
                self._settled.add(_settle_key(run.job))
            else:
                self._live[run.job.job_id] = run

    def _previous(self, job: Job, stored: Sequence[Run], from_accounting: bool) -> Run | None:
        live = self._live.get(job.job_id)
        if live is not None:
            if same_job(live, job) or (from_accounting and _later_attempt(live, job)):
                return live
            # The controller reused a live run's id: that run gets its end from sacct.
            log.warning(
                "job id %s reused by a new job (submitted %s, restarts %s; the run's: %s, %s);"
                " the older run ends from sacct",
                job.job_id,
                job.submitted_at,
                job.restarts,
                live.job.submitted_at,
                live.restarts,
            )
            return None
        for run in stored:
            if same_job(run, job):
                return run
        return None

    def _is_final(self, run: Run) -> bool:
        return run.job.job_id not in self._live

    def _give_up_on(self, job_ids: Sequence[str], stats: CycleStats) -> None:
        stale: list[tuple[Run, bool, list[RunEvent]]] = []
        for job_id in job_ids:
            self._attempts[job_id] = self._attempts.get(job_id, 0) + 1
            if self._attempts[job_id] < self.final_attempts:
                continue
            run = self._live[job_id]
            log.warning(
                "job %s (%s): no final record from sacct after %d tries; keeping %s",
                job_id,
                run.experiment,
                self._attempts[job_id],
                run.job.state.value,
            )
            stale.append((run, True, []))
        if stale:
            self.repository.save_runs(stale, self.clock())
            for run, _, _ in stale:
                self._live.pop(run.job.job_id, None)
                self._attempts.pop(run.job.job_id, None)
                stats.changed += 1

    def _note_seen(self) -> None:
        now = self.clock()
        if self._last_seen_written and now - self._last_seen_written < LAST_SEEN_EVERY:
            return
        self.repository.set_state(self.cluster, LAST_SEEN, now.isoformat())
        self._last_seen_written = now


def _settle_key(job: Job) -> tuple[str, datetime | None, int]:
    return (job.job_id, job.submitted_at, job.restarts or 0)


def _later_attempt(run: Run, job: Job) -> bool:
    """True when sacct shows a later attempt of a requeued live run (sacct has no restart count)."""
    old, new = run.job.submitted_at, job.submitted_at
    return old is not None and new is not None and new > old and run.restarts > 0
