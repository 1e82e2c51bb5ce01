"""pyslurm.core.job: jobs as slurmctld holds them."""

from __future__ import annotations

from typing import Any

from pyslurm import _standin
from pyslurm.db.tres import GPU, TrackableResources
from pyslurm.utils import MEM_PER_CPU, expand_stdio, get_exit_code, raw_time, u32_parse
from pyslurm.xcollections import MultiClusterMap

NO_VAL64 = 0xFFFFFFFFFFFFFFFE


class Job:
    """A job record from slurmctld (a slurm_job_info_t)."""

    def __init__(self, record: dict[str, Any]) -> None:
        self._r = record

    def __repr__(self) -> str:
        return f"pyslurm.Job({self.id})"

    @staticmethod
    def load(job_id: int) -> Job:
        """Load one job (raises RPCError if the controller does not hold it)."""
        from pyslurm.core.error import RPCError

        _standin.rpc("slurm_load_job")
        for record in _standin.controller:
            if record["job_id"] == job_id:
                return Job(record)
        raise RPCError(msg="Invalid job id specified")

    id = property(lambda self: self._r["job_id"])
    name = property(lambda self: self._r.get("name"))
    cluster = property(lambda self: self._r.get("cluster") or _standin.config["cluster_name"])
    account = property(lambda self: self._r.get("account"))
    partition = property(lambda self: self._r.get("partition"))
    user_name = property(lambda self: self._r.get("user_name"))
    allocated_nodes = property(lambda self: self._r.get("nodes"))
    num_nodes = property(lambda self: u32_parse(self._r.get("num_nodes", 0)))
    cpus = property(lambda self: u32_parse(self._r.get("num_cpus", 0), on_noval=1))
    state = property(lambda self: self._r["job_state"])
    comment = property(lambda self: self._r.get("comment"))
    working_directory = property(lambda self: self._r.get("work_dir"))
    requeue_count = property(lambda self: u32_parse(self._r.get("restart_cnt"), on_noval=0))
    is_batch_job = property(lambda self: bool(self._r.get("batch_flag", 1)))
    submit_time = property(lambda self: raw_time(self._r.get("submit_time")))
    eligible_time = property(lambda self: raw_time(self._r.get("eligible_time")))
    start_time = property(lambda self: raw_time(self._r.get("start_time")))
    end_time = property(lambda self: raw_time(self._r.get("end_time")))
    array_id = property(lambda self: u32_parse(self._r.get("array_job_id", 0)))
    array_task_id = property(lambda self: u32_parse(self._r.get("array_task_id", 0xFFFFFFFE)))
    exit_code = property(lambda self: get_exit_code(self._r.get("exit_code"))[0])
    exit_code_signal = property(lambda self: get_exit_code(self._r.get("exit_code"))[1])
    allocated_tres = property(
        lambda self: TrackableResources.from_str(self._r.get("tres_alloc_str"))
    )
    requested_tres = property(lambda self: TrackableResources.from_str(self._r.get("tres_req_str")))

    @property
    def state_reason(self) -> str:
        return self._r.get("state_desc") or self._r.get("state_reason") or "None"

    @property
    def array_tasks_waiting(self) -> str | None:
        task_str = self._r.get("array_task_str")
        return task_str.split("%", 1)[0] if task_str else None

    @property
    def memory_per_cpu(self) -> int | None:
        value = self._r.get("pn_min_memory", NO_VAL64)
        if value == NO_VAL64 or not value & MEM_PER_CPU:
            return None
        return u32_parse(value & ~MEM_PER_CPU)

    @property
    def memory_per_node(self) -> int | None:
        value = self._r.get("pn_min_memory", NO_VAL64)
        if value == NO_VAL64 or value & MEM_PER_CPU:
            return None
        return u32_parse(value)

    @property
    def memory(self) -> int | None:
        if self.memory_per_cpu is not None:
            return self.memory_per_cpu * self.cpus
        if self.memory_per_node is not None:
            return self.memory_per_node * (self.num_nodes or 1)
        return None

    @property
    def tres(self) -> Any:
        running = self.state == "RUNNING"
        return self.allocated_tres if running else self.requested_tres

    @property
    def gres(self) -> dict[str, Any]:
        tres = self.tres
        return tres.gres if tres else {}

    @property
    def gpus(self) -> dict[str, Any]:
        return {key: value for key, value in self.gres.items() if isinstance(value, GPU)}

    def _stdio(self, key: str) -> str:
        return expand_stdio(self._r.get(key), self._r) or ""

    standard_output = property(lambda self: self._stdio("std_out"))
    standard_error = property(lambda self: self._stdio("std_err"))


class Jobs(MultiClusterMap):
    """Every job the controller holds."""

    @staticmethod
    def load(preload_passwd_info: bool = False, frozen: bool = False) -> Jobs:
        """Retrieve all jobs from slurmctld (raises RPCError when it cannot be reached)."""
        _standin.rpc("slurm_load_jobs")
        out = Jobs()
        for record in _standin.controller:
            job = Job(record)
            out.add(job.cluster, job.id, job)
        return out
