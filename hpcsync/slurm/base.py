"""The Scheduler interface every Slurm backend implements."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from hpcsync.models import Job


class Scheduler(Protocol):
    """What the daemon needs from Slurm; every method raises SchedulerUnavailable on failure."""

    name: str
    """Backend name for logs: `cli`, `pyslurm` or `fake`."""

    def cluster_name(self) -> str:
        """Return Slurm's ClusterName."""
        ...

    def version(self) -> str:
        """Return the Slurm version string, e.g. `22.05.8`."""
        ...

    def list_jobs(self) -> list[Job]:
        """Return every job the controller holds, one array task per record, in one call."""
        ...

    def job_history(self, job_ids: Sequence[str]) -> list[Job]:
        """Return the accounting records (final state, exit code) of these jobs, in one call."""
        ...

    def jobs_between(self, start: datetime, end: datetime) -> list[Job]:
        """Return the accounting records of jobs that were eligible, ran or ended in [start, end]."""
        ...
