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
        """Return every job the controller holds, one array task per record, in one call.

        `exit_code` may be None here (squeue has none); accounting gives it.
        """
        ...

    def job_history(self, job_ids: Sequence[str]) -> list[Job]:
        """Return the accounting records (final state, exit code) of these jobs, in one call.

        A plain id also selects every task of that array; `A_T` finds a task even while it is
        still inside the pending array record.
        """
        ...

    def jobs_between(self, start: datetime, end: datetime) -> list[Job]:
        """Return the accounting records of jobs that were eligible, ran or ended in [start, end].

        The pyslurm backend leaves out jobs that never became eligible (held, then cancelled).
        """
        ...
