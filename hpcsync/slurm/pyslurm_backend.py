"""The Scheduler that talks to slurmctld and slurmdbd through pyslurm 25.11's API."""

from __future__ import annotations

import dataclasses
import importlib
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from types import ModuleType
from typing import Any, TypeVar

from hpcsync.errors import SchedulerUnavailable
from hpcsync.models import Job, JobState
from hpcsync.slurm.parsers import expand_task_ids, selected_by
from hpcsync.slurm.patterns import default_output

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_NULLS = frozenset({"", "None", "N/A", "(null)", "None assigned"})


def pyslurm_version() -> str | None:
    """Return the installed pyslurm's version, or None if it cannot be imported."""
    try:
        module = importlib.import_module("pyslurm")
    except Exception as exc:  # a pyslurm built for another Slurm fails in many ways on import
        logger.debug("pyslurm not importable: %s", exc)
        return None
    return str(getattr(module, "__version__", "")) or None


class PyslurmScheduler:
    """Reads jobs with `pyslurm.Jobs.load()` and `pyslurm.db.Jobs.load(JobFilter)`."""

    name = "pyslurm"

    def __init__(self) -> None:
        try:
            self._pyslurm: ModuleType = importlib.import_module("pyslurm")
        except Exception as exc:
            raise SchedulerUnavailable(f"pyslurm: cannot import: {exc}") from exc
        self._errors: tuple[type[BaseException], ...] = (
            self._pyslurm.PyslurmError,
            ValueError,
            OSError,
        )

    def _call(self, what: str, function: Callable[[], _T]) -> _T:
        """Run one pyslurm call, turning its exceptions into SchedulerUnavailable."""
        logger.debug("pyslurm: %s", what)
        try:
            return function()
        except self._errors as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SchedulerUnavailable(f"pyslurm: {what} failed: {message}") from exc

    def cluster_name(self) -> str:
        """Return ClusterName from the controller's configuration."""
        config = self._call("slurmctld.Config.load", self._pyslurm.slurmctld.Config.load)
        return str(config.cluster_name)

    def version(self) -> str:
        """Return the controller's Slurm version."""
        config = self._call("slurmctld.Config.load", self._pyslurm.slurmctld.Config.load)
        return str(config.version)

    def list_jobs(self) -> list[Job]:
        """Return every job and array task the controller holds, from one RPC."""
        # Reading all passwd entries once beats one lookup per job's user_name.
        return self._call(
            "Jobs.load",
            lambda: [
                job
                for record in self._pyslurm.Jobs.load(preload_passwd_info=True).values()
                for job in _controller_jobs(record)
            ],
        )

    def job_history(self, job_ids: Sequence[str]) -> list[Job]:
        """Return slurmdbd's records of these jobs (`10` selects all tasks of array 10)."""
        if not job_ids:
            return []
        raw_ids: dict[int, None] = {}
        for job_id in job_ids:
            try:
                raw_ids[int(job_id.partition("_")[0])] = None
            except ValueError:
                raise SchedulerUnavailable(f"pyslurm: not a Slurm job id: {job_id!r}") from None
        # JobFilter takes integer ids; slurmdbd then also returns every task of an array id.
        jobs = self._load_db("db.Jobs.load", ids=list(raw_ids))
        return [job for job in jobs if selected_by(job, job_ids)]

    def jobs_between(self, start: datetime, end: datetime) -> list[Job]:
        """Return slurmdbd's records of jobs that were eligible, ran or ended in [start, end]."""
        return self._load_db("db.Jobs.load", start_time=start, end_time=end)

    def _load_db(self, what: str, **conditions: Any) -> list[Job]:
        """Return the Jobs of one `db.Jobs.load(JobFilter(**conditions))` call."""
        db = self._pyslurm.db
        return self._call(
            what,
            lambda: [
                job
                for record in db.Jobs.load(db.JobFilter(**conditions)).values()
                for job in _db_jobs(record)
            ],
        )


def _text(value: Any) -> str | None:
    """Return a pyslurm string attribute, None for its words for nothing."""
    if value is None:
        return None
    text = str(value).strip()
    return None if text in _NULLS else text


def _int(value: Any) -> int | None:
    """Return a pyslurm integer attribute, None if unset."""
    return None if value is None else int(value)


def _time(value: Any) -> datetime | None:
    """Return a pyslurm unix timestamp as aware UTC, None if unset."""
    if not value:
        return None
    return datetime.fromtimestamp(int(value), UTC)


def _gpus(record: Any) -> tuple[int | None, str | None]:
    """Return (count, type) from a job's `gpus` mapping (`{"gpu": GPU, "gpu:a100": GPU}`)."""
    gpus: dict[str, Any] = dict(record.gpus or {})
    if not gpus:
        return None, None
    types = sorted({str(gpu.type) for gpu in gpus.values() if gpu.type})
    if "gpu" in gpus:
        count = int(gpus["gpu"].count)
    else:
        count = sum(int(gpu.count) for gpu in gpus.values())
    return count, (",".join(types) or None)


def _array_tasks(record: Any) -> list[tuple[int | None, int | None]]:
    """Return (array_job_id, array_task_id) for each task one pyslurm record stands for."""
    array_id = _int(record.array_id)
    if array_id is None:
        return [(None, None)]
    waiting = _text(record.array_tasks_waiting)
    if waiting is not None:
        try:
            return [(array_id, task) for task in expand_task_ids(waiting)]
        except ValueError:
            raise SchedulerUnavailable(
                f"pyslurm: job {record.id}: bad array_tasks_waiting {waiting!r}"
            ) from None
    # pyslurm reads array_task_id with u32_parse, which turns task 0 into None.
    task = _int(record.array_task_id)
    return [(array_id, 0 if task is None else task)]


def _common(record: Any, node_list: str | None) -> dict[str, Any]:
    """Return the Job fields pyslurm's controller and database jobs spell the same way."""
    state = JobState.parse(str(record.state))
    num_gpus, gpu_type = _gpus(record)
    started = _time(record.start_time)
    if state is JobState.PENDING or (state.is_terminal and node_list is None):
        started = None
    return {
        "job_id_raw": int(record.id),
        "state": state,
        "name": str(record.name or ""),
        "user_name": _text(record.user_name),
        "account": _text(record.account),
        "partition": _text(record.partition),
        "node_list": node_list,
        "num_nodes": _int(record.num_nodes),
        "num_cpus": _int(record.cpus),
        "mem_mb": _int(record.memory),
        "num_gpus": num_gpus,
        "gpu_type": gpu_type,
        "submitted_at": _time(record.submit_time),
        "started_at": started,
        "ended_at": _time(record.end_time) if state.is_terminal else None,
        "work_dir": _text(record.working_directory),
        "comment": _text(record.comment),
        "restarts": _int(record.requeue_count),
    }


def _expand(job: Job, record: Any, *, batch_default: bool) -> list[Job]:
    """Return one Job per array task the record stands for, with stdout/stderr paths filled in."""
    jobs: list[Job] = []
    for array_job_id, task in _array_tasks(record):
        job_id = str(job.job_id_raw) if task is None else f"{array_job_id}_{task}"
        one = dataclasses.replace(job, job_id=job_id, array_job_id=array_job_id, array_task_id=task)
        # pyslurm expands the patterns itself; with no --output it returns "".
        stdout = _text(record.standard_output)
        if stdout is None and batch_default and one.work_dir is not None:
            stdout = default_output(one)
        stderr = _text(record.standard_error) or stdout
        jobs.append(dataclasses.replace(one, stdout_path=stdout, stderr_path=stderr))
    return jobs


def _controller_jobs(record: Any) -> list[Job]:
    """Return the Jobs one `pyslurm.Job` stands for."""
    fields = _common(record, _text(record.allocated_nodes))
    state: JobState = fields["state"]
    job = Job(
        job_id=str(fields["job_id_raw"]),
        state_reason=_text(record.state_reason),
        exit_code=_int(record.exit_code) if state.is_terminal else None,
        exit_signal=_int(record.exit_code_signal) if state.is_terminal else None,
        **fields,
    )
    return _expand(job, record, batch_default=bool(record.is_batch_job))


def _db_jobs(record: Any) -> list[Job]:
    """Return the Jobs one `pyslurm.db.Job` stands for, with usage from its steps."""
    fields = _common(record, _text(record.nodelist))
    state: JobState = fields["state"]
    stats = record.stats
    # JobStatistics is all zeros for a job without (sampled) steps; sacct shows no MaxRSS then.
    rss_bytes = _int(stats.resident_memory) or None
    job = Job(
        job_id=str(fields["job_id_raw"]),
        exit_code=_int(record.exit_code) if state.is_terminal else None,
        exit_signal=_int(record.exit_code_signal) if state.is_terminal else None,
        elapsed_seconds=_int(record.elapsed_time) or 0,
        total_cpu_seconds=float(stats.total_cpu_time or 0),
        max_rss_mb=None if rss_bytes is None else rss_bytes / 2**20,
        **fields,
    )
    return _expand(job, record, batch_default=False)
