"""An in-memory Scheduler for tests: a controller and an accounting database you can script."""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from hpcsync.errors import SchedulerUnavailable
from hpcsync.models import Job
from hpcsync.slurm.parsers import selected_by

logger = logging.getLogger(__name__)


class FakeScheduler:
    """Holds jobs the way slurmctld (until purge) and slurmdbd (for ever) do; counts calls."""

    name = "fake"

    def __init__(
        self,
        jobs: Iterable[Job] = (),
        *,
        cluster: str = "testcluster",
        slurm_version: str = "22.05.8",
        history: Iterable[Job] = (),
    ) -> None:
        self.cluster = cluster
        self.slurm_version = slurm_version
        self.controller: dict[str, Job] = {}
        self.accounting: dict[str, Job] = {job.job_id: job for job in history}
        self.calls: Counter[str] = Counter()
        self._failure: str | None = None
        self._failures_left: int | None = None
        self.add(*jobs)

    def add(self, *jobs: Job) -> None:
        """Submit jobs: the controller and the accounting database both hold them."""
        for job in jobs:
            self.controller[job.job_id] = job
            self.accounting[job.job_id] = job

    def update(self, job_id: str, **changes: Any) -> Job:
        """Change fields of a job wherever it is held, and return the new record."""
        current = self.controller.get(job_id) or self.accounting.get(job_id)
        if current is None:
            raise KeyError(job_id)
        job = dataclasses.replace(current, **changes)
        if job_id in self.controller:
            self.controller[job_id] = job
        self.accounting[job_id] = job
        return job

    def purge(self, *job_ids: str) -> None:
        """Drop jobs from the controller (MinJobAge passed); accounting keeps them."""
        for job_id in job_ids:
            self.controller.pop(job_id, None)

    def remove(self, *job_ids: str) -> None:
        """Forget jobs everywhere."""
        for job_id in job_ids:
            self.controller.pop(job_id, None)
            self.accounting.pop(job_id, None)

    def fail(
        self,
        message: str = "slurm_load_jobs error: Unable to contact slurm controller",
        *,
        times: int | None = None,
    ) -> None:
        """Make every call (or the next `times` calls) raise SchedulerUnavailable(message)."""
        self._failure = message
        self._failures_left = times

    def recover(self) -> None:
        """Stop failing."""
        self._failure = None
        self._failures_left = None

    def _call(self, method: str) -> None:
        """Count the call and raise the scripted failure, if any."""
        self.calls[method] += 1
        if self._failure is None:
            return
        message = self._failure
        if self._failures_left is not None:
            self._failures_left -= 1
            if self._failures_left <= 0:
                self.recover()
        raise SchedulerUnavailable(message)

    def cluster_name(self) -> str:
        """Return the configured cluster name."""
        self._call("cluster_name")
        return self.cluster

    def version(self) -> str:
        """Return the configured Slurm version."""
        self._call("version")
        return self.slurm_version

    def list_jobs(self) -> list[Job]:
        """Return every job the controller holds."""
        self._call("list_jobs")
        return list(self.controller.values())

    def job_history(self, job_ids: Sequence[str]) -> list[Job]:
        """Return accounting records as `sacct -j` does: `10` also selects every task of array 10."""
        if not job_ids:
            return []
        self._call("job_history")
        return [job for job in self.accounting.values() if selected_by(job, job_ids)]

    def jobs_between(self, start: datetime, end: datetime) -> list[Job]:
        """Return accounting records of jobs submitted before `end` that had not ended by `start`."""
        self._call("jobs_between")
        return [
            job
            for job in self.accounting.values()
            if (job.submitted_at is None or job.submitted_at <= end)
            and (job.ended_at is None or job.ended_at >= start)
        ]
