"""Pure rules that turn Slurm jobs into runs: the tag grammar, status mapping, and merging."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from datetime import datetime

from hpcsync.models import Job, JobState, Run, RunEvent, RunStatus

_PAIR = re.compile(r"""([A-Za-z_][\w.\-]*)=("[^"]*"|'[^']*'|[^\s;]*)""")

_STATUS = {
    JobState.PENDING: RunStatus.PENDING,
    JobState.CONFIGURING: RunStatus.PENDING,
    JobState.REQUEUED: RunStatus.PENDING,
    JobState.REQUEUE_FED: RunStatus.PENDING,
    JobState.REQUEUE_HOLD: RunStatus.PENDING,
    JobState.RESV_DEL_HOLD: RunStatus.PENDING,
    JobState.SPECIAL_EXIT: RunStatus.PENDING,
    JobState.RUNNING: RunStatus.RUNNING,
    JobState.COMPLETING: RunStatus.RUNNING,
    JobState.SUSPENDED: RunStatus.RUNNING,
    JobState.STOPPED: RunStatus.RUNNING,
    JobState.SIGNALING: RunStatus.RUNNING,
    JobState.STAGE_OUT: RunStatus.RUNNING,
    JobState.RESIZING: RunStatus.RUNNING,
    JobState.COMPLETED: RunStatus.COMPLETED,
    JobState.FAILED: RunStatus.FAILED,
    JobState.TIMEOUT: RunStatus.FAILED,
    JobState.OUT_OF_MEMORY: RunStatus.FAILED,
    JobState.NODE_FAIL: RunStatus.FAILED,
    JobState.BOOT_FAIL: RunStatus.FAILED,
    JobState.DEADLINE: RunStatus.FAILED,
    JobState.CANCELLED: RunStatus.CANCELLED,
    JobState.PREEMPTED: RunStatus.CANCELLED,
    JobState.REVOKED: RunStatus.CANCELLED,
    JobState.UNKNOWN: RunStatus.PENDING,
}


@dataclass(frozen=True, slots=True)
class Tag:
    """What a job's comment says about its run."""

    experiment: str
    run_name: str | None
    tags: dict[str, str]


def parse_comment(comment: str | None) -> Tag | None:
    """Return the experiment tag in a job comment (`experiment=NAME run=X tags=a,b`), or None."""
    if not comment or "=" not in comment:
        return None
    pairs: dict[str, str] = {}
    for key, raw in _PAIR.findall(comment):
        value = raw[1:-1] if raw[:1] in "\"'" and len(raw) >= 2 else raw
        pairs.setdefault(key, value)
    experiment = pairs.pop("experiment", "").strip()
    if not experiment:
        return None
    run_name = pairs.pop("run", "").strip() or None
    tags: dict[str, str] = {}
    for item in pairs.pop("tags", "").split(","):
        if item.strip():
            tags[item.strip()] = ""
    tags.update(pairs)
    return Tag(experiment=experiment, run_name=run_name, tags=tags)


def status_for(state: JobState) -> RunStatus:
    """Return the tracker status for a Slurm state."""
    return _STATUS[state]


def tag_for(job: Job, track_untagged: bool) -> Tag | None:
    """Return how to track `job`, or None when it is not tracked."""
    tag = parse_comment(job.comment)
    if tag is None and track_untagged:
        return Tag(experiment=job.name or "untagged", run_name=None, tags={})
    return tag


def is_placeholder(job: Job) -> bool:
    """True for slurmdbd's stand-in job record (no partition) before the real one arrives.

    Its name is `allocation`, its user the SlurmUser, and its state and exit code are not yet
    the job's, even when it already says COMPLETED (tests/fixtures/slurm/README.md).
    """
    return not job.partition


def same_job(run: Run, job: Job) -> bool:
    """True when `job` is the job behind `run`, not a reuse of its id after a controller reset."""
    if run.job.job_id != job.job_id:
        return False
    old, new = run.job.submitted_at, job.submitted_at
    if old is None or new is None or old == new:
        return True
    # A requeue may move the submit time on; it always counts a restart.
    return (job.restarts or 0) > run.restarts and new > old


def settle_times(job: Job) -> Job:
    """Return `job` without the estimates Slurm prints for times and exit codes not yet real."""
    if job.state.is_terminal:
        return job
    if status_for(job.state) is RunStatus.PENDING:
        return dataclasses.replace(
            job, started_at=None, ended_at=None, exit_code=None, exit_signal=None
        )
    return dataclasses.replace(job, ended_at=None, exit_code=None, exit_signal=None)


def merge_job(old: Job, new: Job) -> Job:
    """Return `new`, keeping from `old` the fields `new`'s source does not report."""
    new = settle_times(new)
    keep_when_missing = {
        field.name: getattr(old, field.name)
        for field in dataclasses.fields(Job)
        if getattr(new, field.name) is None and getattr(old, field.name) is not None
    }
    if new.state is not old.state:
        # A reason belongs to the state it explains (sacct reports none).
        keep_when_missing.pop("state_reason", None)
    if not new.state.is_terminal:
        # A job that runs again has no end yet: keep none of the old attempt's outcome.
        for name in ("ended_at", "exit_code", "exit_signal"):
            keep_when_missing.pop(name, None)
        if status_for(new.state) is RunStatus.PENDING:
            keep_when_missing.pop("started_at", None)
    return dataclasses.replace(new, **keep_when_missing) if keep_when_missing else new


def event_time(job: Job, now: datetime) -> datetime:
    """Return when `job` entered its current state, as well as Slurm says."""
    if job.state.is_terminal and job.ended_at is not None:
        return job.ended_at
    if status_for(job.state) is RunStatus.RUNNING and job.started_at is not None:
        return job.started_at
    if status_for(job.state) is RunStatus.PENDING and job.submitted_at is not None:
        # Slurm's clock for every event: `now` could sort after a start in the same second.
        return job.submitted_at
    return now


def observe(
    previous: Run | None, job: Job, tag: Tag | None, cluster: str, now: datetime
) -> tuple[Run, list[RunEvent]]:
    """Return the run after seeing `job`, and the events it caused.

    `previous` is the stored run of this same job (see `same_job`), None for a new one;
    `tag` is required for a new run.
    """
    if previous is None:
        if tag is None:
            raise ValueError(f"job {job.job_id} has no tag and no run")
        job = settle_times(job)
        run = Run(
            cluster=cluster,
            experiment=tag.experiment,
            name=tag.run_name,
            tags=tag.tags,
            job=job,
            status=status_for(job.state),
            restarts=job.restarts or 0,
        )
        reason = job.state_reason if job.state is not JobState.PENDING else None
        return run, [RunEvent(event_time(job, now), None, job.state.value, reason)]

    merged = merge_job(previous.job, job)
    restarts = max(previous.restarts, job.restarts or 0)
    if (
        previous.job.state.is_terminal
        and not merged.state.is_terminal
        and restarts == previous.restarts
    ):
        # Accounting lags the controller: an older, still-running record never undoes an end.
        merged = dataclasses.replace(
            merged,
            state=previous.job.state,
            ended_at=previous.job.ended_at,
            exit_code=previous.job.exit_code if merged.exit_code is None else merged.exit_code,
            exit_signal=previous.job.exit_signal,
        )
    run = dataclasses.replace(
        previous, job=merged, status=status_for(merged.state), restarts=restarts
    )
    events: list[RunEvent] = []
    if restarts > previous.restarts:
        events.append(
            RunEvent(
                now, previous.job.state.value, merged.state.value, f"requeued (restart {restarts})"
            )
        )
    elif merged.state is not previous.job.state:
        events.append(
            RunEvent(
                event_time(merged, now),
                previous.job.state.value,
                merged.state.value,
                merged.state_reason if merged.state_reason not in (None, "None") else None,
            )
        )
    return run, events
