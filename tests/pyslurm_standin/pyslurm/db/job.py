"""pyslurm.db.job: jobs as slurmdbd keeps them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pyslurm import _standin
from pyslurm.db.tres import TrackableResources
from pyslurm.utils import expand_stdio, find_tres_count, get_exit_code, raw_time, u32_parse
from pyslurm.xcollections import MultiClusterMap


class JobFilter:
    """Search conditions for db.Jobs.load (only ids and the time window are honoured here)."""

    ids: list[int] | None = None
    start_time: Any = None
    end_time: Any = None
    accounts: list[str] | None = None
    clusters: Any = None
    users: list[str] | None = None
    names: list[str] | None = None
    partitions: list[str] | None = None
    with_script: bool = False
    with_env: bool = False
    truncate_time: bool = False

    def __init__(self, **kwargs: Any) -> None:
        for key, value in kwargs.items():
            if not hasattr(type(self), key):
                raise AttributeError(f"'JobFilter' object has no attribute '{key}'")
            setattr(self, key, value)


JobSearchFilter = JobFilter


class JobStatistics:
    """Usage summed over a job's steps."""

    def __init__(self) -> None:
        self.total_cpu_time = 0
        self.user_cpu_time = 0
        self.system_cpu_time = 0
        self.elapsed_cpu_time = 0
        self.resident_memory = 0
        self.virtual_memory = 0

    @staticmethod
    def from_steps(steps: JobSteps) -> JobStatistics:
        """Sum CPU time, take the largest MaxRSS (bytes)."""
        total = JobStatistics()
        for step in steps.values():
            total.total_cpu_time += step.stats.total_cpu_time
            total.resident_memory = max(total.resident_memory, step.stats.max_resident_memory)
        return total


class JobStepStatistics:
    """Usage of one step."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.total_cpu_time = int(record.get("tot_cpu_sec", 0))
        self.max_resident_memory = int(record.get("max_rss_bytes", 0))


class JobStep:
    """One step of a database job (`batch`, `extern`, `0`)."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.id = record["step_id"]
        self.stats = JobStepStatistics(record)


class JobSteps(dict[Any, JobStep]):
    """A job's steps by id."""


class Job:
    """A job record from slurmdbd."""

    def __init__(self, record: dict[str, Any]) -> None:
        self._r = record
        self.steps = JobSteps({step["step_id"]: JobStep(step) for step in record.get("steps", [])})
        self.stats = JobStatistics.from_steps(self.steps)

    def __repr__(self) -> str:
        return f"pyslurm.db.Job({self.id})"

    id = property(lambda self: self._r["jobid"])
    name = property(lambda self: self._r.get("jobname"))
    cluster = property(lambda self: self._r.get("cluster") or _standin.config["cluster_name"])
    account = property(lambda self: self._r.get("account"))
    partition = property(lambda self: self._r.get("partition"))
    nodelist = property(lambda self: self._r.get("nodes"))
    user_name = property(lambda self: self._r.get("user_name"))
    comment = property(lambda self: self._r.get("derived_es"))
    working_directory = property(lambda self: self._r.get("work_dir"))
    state = property(lambda self: self._r["state"])
    submit_time = property(lambda self: raw_time(self._r.get("submit")))
    eligible_time = property(lambda self: raw_time(self._r.get("eligible")))
    start_time = property(lambda self: raw_time(self._r.get("start")))
    end_time = property(lambda self: raw_time(self._r.get("end")))
    elapsed_time = property(lambda self: raw_time(self._r.get("elapsed")))
    requeue_count = property(lambda self: u32_parse(self._r.get("restart_cnt"), on_noval=0))
    array_id = property(lambda self: u32_parse(self._r.get("array_job_id", 0)))
    array_task_id = property(lambda self: u32_parse(self._r.get("array_task_id", 0xFFFFFFFE)))
    exit_code = property(lambda self: get_exit_code(self._r.get("exitcode"))[0])
    exit_code_signal = property(lambda self: get_exit_code(self._r.get("exitcode"))[1])
    allocated_tres = property(
        lambda self: TrackableResources.from_str(self._r.get("tres_alloc_str"))
    )
    requested_tres = property(lambda self: TrackableResources.from_str(self._r.get("tres_req_str")))

    @property
    def array_tasks_waiting(self) -> str | None:
        task_str = self._r.get("array_task_str")
        return task_str.split("%", 1)[0] if task_str else None

    @property
    def num_nodes(self) -> int:
        value = find_tres_count(self._r.get("tres_alloc_str"), "node", on_noval=None)
        if value is not None:
            return int(value)
        return int(find_tres_count(self._r.get("tres_req_str"), "node"))

    @property
    def cpus(self) -> int:
        value = find_tres_count(self._r.get("tres_alloc_str"), "cpu", on_noval=None)
        if value is not None:
            return int(value)
        return int(u32_parse(self._r.get("req_cpus", 0), on_noval=1))

    @property
    def memory(self) -> int:
        return int(find_tres_count(self._r.get("tres_req_str"), "mem"))

    @property
    def tres(self) -> Any:
        return self.allocated_tres or self.requested_tres

    @property
    def gres(self) -> dict[str, Any]:
        return self.tres.gres if self.tres else {}

    @property
    def gpus(self) -> dict[str, Any]:
        from pyslurm.db.tres import GPU

        return {key: value for key, value in self.gres.items() if isinstance(value, GPU)}

    def _stdio(self, key: str) -> str | None:
        record = {
            "job_id": self._r["jobid"],
            "array_job_id": self._r.get("array_job_id", 0),
            "array_task_id": self._r.get("array_task_id", 0xFFFFFFFE),
            "name": self._r.get("jobname", ""),
            "user_name": self._r.get("user_name", ""),
            "work_dir": self._r.get("work_dir"),
        }
        return expand_stdio(self._r.get(key), record)

    standard_output = property(lambda self: self._stdio("std_out"))
    standard_error = property(lambda self: self._stdio("std_err"))


def _timestamp(value: Any) -> int:
    """date_to_timestamp: a datetime, unix time or None as unix time (0 for None)."""
    if value is None:
        return 0
    if isinstance(value, datetime):
        return int(value.timestamp())
    return int(value)


def _selected(record: dict[str, Any], db_filter: JobFilter) -> bool:
    """Apply slurmdbd's selection: listed ids (and their array tasks), else the time window."""
    if db_filter.ids:
        ids = {int(job_id) for job_id in db_filter.ids}
        return record["jobid"] in ids or record.get("array_job_id") in ids
    start, end = _timestamp(db_filter.start_time), _timestamp(db_filter.end_time)
    eligible, ended = record.get("eligible", 0), record.get("end", 0)
    in_window = bool(eligible) and (not end or eligible < end)
    return in_window and (not ended or ended >= start)


class Jobs(MultiClusterMap):
    """A collection of database jobs."""

    @staticmethod
    def load(db_filter: JobFilter | None = None, db_connection: Any = None) -> Jobs:
        """Load jobs from slurmdbd (raises RPCError when it cannot be reached)."""
        _standin.rpc("slurmdb_jobs_get")
        db_filter = db_filter or JobFilter()
        out = Jobs()
        for record in _standin.accounting:
            if _selected(record, db_filter):
                job = Job(record)
                out.add(job.cluster, job.id, job)
        return out
