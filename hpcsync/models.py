"""Records shared by every layer: Slurm jobs, runs, events, metric points."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


class JobState(enum.StrEnum):
    """A Slurm job state, as Slurm spells it."""

    PENDING = "PENDING"
    CONFIGURING = "CONFIGURING"
    RUNNING = "RUNNING"
    COMPLETING = "COMPLETING"
    SUSPENDED = "SUSPENDED"
    STOPPED = "STOPPED"
    SIGNALING = "SIGNALING"
    STAGE_OUT = "STAGE_OUT"
    RESIZING = "RESIZING"
    REQUEUED = "REQUEUED"
    REQUEUE_FED = "REQUEUE_FED"
    REQUEUE_HOLD = "REQUEUE_HOLD"
    RESV_DEL_HOLD = "RESV_DEL_HOLD"
    SPECIAL_EXIT = "SPECIAL_EXIT"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    PREEMPTED = "PREEMPTED"
    NODE_FAIL = "NODE_FAIL"
    BOOT_FAIL = "BOOT_FAIL"
    DEADLINE = "DEADLINE"
    REVOKED = "REVOKED"
    UNKNOWN = "UNKNOWN"

    @classmethod
    def parse(cls, text: str) -> JobState:
        """Return the state for Slurm's word (`CANCELLED by 0`, `RUNNING+`); UNKNOWN if unrecognised."""
        word = text.strip().split(" ", 1)[0].rstrip("+").upper()
        try:
            return cls(word)
        except ValueError:
            return cls.UNKNOWN

    @property
    def is_terminal(self) -> bool:
        """True when the job will not run again without a requeue."""
        return self in _TERMINAL


_TERMINAL = frozenset(
    {
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.TIMEOUT,
        JobState.OUT_OF_MEMORY,
        JobState.PREEMPTED,
        JobState.NODE_FAIL,
        JobState.BOOT_FAIL,
        JobState.DEADLINE,
        JobState.REVOKED,
    }
)


class RunStatus(enum.StrEnum):
    """The experiment tracker's run status."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class Job:
    """One Slurm job (or array task) as a scheduler backend reports it.

    Times are timezone-aware UTC. Fields a source does not report are None.
    """

    job_id: str
    """As Slurm prints it: `1234`, or `1234_7` for an array task."""
    job_id_raw: int
    """Pending array tasks share the array's raw id; identity is (cluster, job_id, submit time)."""
    state: JobState
    name: str = ""
    array_job_id: int | None = None
    array_task_id: int | None = None
    state_reason: str | None = None
    exit_code: int | None = None
    exit_signal: int | None = None
    user_name: str | None = None
    account: str | None = None
    partition: str | None = None
    node_list: str | None = None
    num_nodes: int | None = None
    num_cpus: int | None = None
    mem_mb: int | None = None
    num_gpus: int | None = None
    gpu_type: str | None = None
    submitted_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    work_dir: str | None = None
    stdout_path: str | None = None
    """Slurm's `%` patterns already expanded."""
    stderr_path: str | None = None
    comment: str | None = None
    restarts: int | None = None
    elapsed_seconds: int | None = None
    total_cpu_seconds: float | None = None
    max_rss_mb: float | None = None


@dataclass(frozen=True, slots=True)
class Run:
    """A tracked job as the tracking database holds it."""

    cluster: str
    experiment: str
    job: Job
    status: RunStatus
    name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    restarts: int = 0
    id: int | None = None


@dataclass(frozen=True, slots=True)
class RunEvent:
    """One state change of a run."""

    at: datetime
    from_state: str | None
    to_state: str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class MetricPoint:
    """One value of one named metric at one step."""

    name: str
    step: int
    value: float
    timestamp: datetime
