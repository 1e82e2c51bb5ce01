"""One Slurm scenario, captured from the real test cluster, served by every Scheduler backend.

The scenario is the captured text under tests/fixtures/slurm/. The CLI backend reads it through
fake `squeue`/`sacct`/`scontrol` programs that print it; the FakeScheduler and the pyslurm
stand-in are loaded with the same jobs, the stand-in in the shape of Slurm's C records.
"""

from __future__ import annotations

import json
import stat
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any

from hpcsync.models import Job
from hpcsync.slurm import formats
from hpcsync.slurm.parsers import parse_sacct, parse_squeue

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "slurm"
STANDIN = Path(__file__).resolve().parents[1] / "pyslurm_standin"

NO_VAL = 0xFFFFFFFE
MEM_PER_CPU = 0x8000000000000000


@dataclass(frozen=True)
class Scenario:
    """Captured output of one moment, and the facts about it that every backend must show."""

    name: str
    squeue_file: str
    sacct_file: str
    live: dict[str, dict[str, Any]]
    """Per job id the controller holds: fields list_jobs must report (from the fixture README)."""
    final: dict[str, dict[str, Any]]
    """Per job id: fields job_history must report (exit code, usage)."""
    purged: frozenset[str] = frozenset()
    """Jobs whose squeue lines are dropped, as slurmctld drops a job after MinJobAge."""
    never_eligible: frozenset[str] = frozenset()
    """Jobs held until cancelled: slurmdbd leaves them out of a plain time window."""
    window_file: str | None = None
    """sacct's answer to the window query (`-S ... -E ... --state=...`), if it was captured."""
    window: tuple[datetime, datetime] | None = None
    config_file: str = "scontrol_show_config.txt"
    tz: tzinfo = UTC
    """The zone the capture machine ran in (README: Etc/UTC, no TZ)."""

    def __str__(self) -> str:
        return self.name

    def text(self, name: str) -> str:
        """Return one captured file."""
        return (FIXTURES / name).read_text()

    @property
    def squeue_text(self) -> str:
        """Return the captured squeue output, without the purged jobs' lines."""
        lines = self.text(self.squeue_file).splitlines(keepends=True)
        return "".join(line for line in lines if line.split("|", 1)[0] not in self.purged)

    @property
    def sacct_text(self) -> str:
        """Return the captured sacct output."""
        return self.text(self.sacct_file)

    @property
    def config_text(self) -> str:
        """Return the captured `scontrol show config` output."""
        return self.text(self.config_file)

    def controller_jobs(self) -> list[Job]:
        """Return the jobs the controller held when squeue was captured."""
        return parse_squeue(self.squeue_text, self.tz)

    def accounting_jobs(self) -> list[Job]:
        """Return the jobs slurmdbd held when sacct was captured."""
        return parse_sacct(self.sacct_text, self.tz)

    def window_jobs(self) -> list[Job]:
        """Return sacct's answer to the window query."""
        assert self.window_file is not None
        return parse_sacct(self.text(self.window_file), self.tz)


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


CAPTURE_DIR = "/var/tmp/hpcsync-capture/jobs/capture"
_TAGS = "tags=a,b"

END = Scenario(
    name="end",
    squeue_file="squeue_terminal.txt",
    sacct_file="sacct_jobs.txt",
    window_file="sacct_window_states.txt",
    window=(_utc("2026-11-22T19:52:29"), _utc("2026-11-22T19:56:52")),
    purged=frozenset({"2", "14"}),
    never_eligible=frozenset({"8"}),
    live={
        "1": {"state": "COMPLETED", "state_reason": None, "job_id_raw": 1, "num_cpus": 1,
              "mem_mb": 100, "num_gpus": None, "restarts": 0, "exit_code": 0,
              "stdout_path": f"{CAPTURE_DIR}/slurm-1.out",
              "comment": f"experiment=capture run=a-exit0 {_TAGS}",
              "submitted_at": _utc("2026-11-22T19:53:29"),
              "started_at": _utc("2026-11-22T19:53:32"), "ended_at": _utc("2026-11-22T19:53:35")},
        "3": {"state": "CANCELLED", "state_reason": None, "exit_code": 0},
        "4_0": {"job_id_raw": 16, "array_job_id": 4, "array_task_id": 0,
                "stdout_path": f"{CAPTURE_DIR}/slurm-4_0.out"},
        "4_1": {"job_id_raw": 18, "array_job_id": 4, "array_task_id": 1,
                "stdout_path": f"{CAPTURE_DIR}/slurm-4_1.out"},
        "4_2": {"job_id_raw": 4, "array_job_id": 4, "array_task_id": 2,
                "stdout_path": f"{CAPTURE_DIR}/slurm-4_2.out"},
        "5": {"num_gpus": 1, "gpu_type": "a100"},
        "6": {"state": "TIMEOUT", "state_reason": "TimeLimit"},
        "7": {"state": "COMPLETED", "restarts": 1, "submitted_at": _utc("2026-11-22T19:53:34")},
        "8": {"state": "CANCELLED", "state_reason": "JobHeldUser", "started_at": None,
              "node_list": None, "ended_at": _utc("2026-11-22T19:53:42")},
        "9": {"comment": None, "name": "i-job"},
        "10": {"stdout_path": f"{CAPTURE_DIR}/named-out-10.out"},
        "11_0": {"job_id_raw": 17, "stdout_path": f"{CAPTURE_DIR}/arr-out-11_0.out"},
        "11_1": {"job_id_raw": 11, "stdout_path": f"{CAPTURE_DIR}/arr-out-11_1.out"},
        "12": {"num_cpus": 2, "mem_mb": 200},
        "13": {"comment": "experiment=weird;run=l|pipe tags=x,y; note=a|b"},
        "15": {"num_gpus": 2, "gpu_type": "a100"},
    },
    final={
        "1": {"state": "COMPLETED", "exit_code": 0, "exit_signal": 0, "elapsed_seconds": 3},
        "2": {"state": "FAILED", "exit_code": 3, "exit_signal": 0, "state_reason": None},
        "3": {"state": "CANCELLED", "exit_code": 0},
        "4_0": {"job_id_raw": 16, "array_job_id": 4, "array_task_id": 0, "elapsed_seconds": 10},
        "4_2": {"job_id_raw": 4, "array_job_id": 4, "array_task_id": 2},
        "5": {"num_gpus": 1, "gpu_type": "a100", "max_rss_mb": 4704 / 1024},
        "6": {"state": "TIMEOUT", "exit_code": 0, "elapsed_seconds": 87},
        "7": {"state": "COMPLETED", "submitted_at": _utc("2026-11-22T19:53:34"),
              "started_at": _utc("2026-11-22T19:56:29"), "elapsed_seconds": 20},
        "8": {"state": "CANCELLED", "started_at": None, "node_list": None, "mem_mb": 100},
        "9": {"comment": None},
        "12": {"num_cpus": 2, "mem_mb": 200},
        "13": {"comment": "experiment=weird;run=l|pipe tags=x,y; note=a|b"},
        "14": {"state": "FAILED", "exit_code": 0, "exit_signal": 9,
               "max_rss_mb": 318172 / 1024, "elapsed_seconds": 5},
        "15": {"num_gpus": 2, "gpu_type": "a100"},
    },
)  # fmt: skip
"""Every job has ended; squeue still shows all but the two we purge."""

LIVE = Scenario(
    name="live",
    squeue_file="squeue_mixed.txt",
    sacct_file="sacct_live.txt",
    never_eligible=frozenset({"8"}),
    live={
        "1": {"state": "COMPLETED"},
        "4_0": {"state": "COMPLETED", "job_id_raw": 16},
        "4_1": {"state": "PENDING", "job_id_raw": 4, "state_reason": "JobArrayTaskLimit",
                "array_job_id": 4, "array_task_id": 1, "started_at": None,
                "stdout_path": f"{CAPTURE_DIR}/slurm-4_1.out"},
        "4_2": {"state": "PENDING", "job_id_raw": 4, "array_task_id": 2},
        "5": {"state": "RUNNING", "num_gpus": 1, "gpu_type": "a100", "ended_at": None},
        "6": {"state": "RUNNING", "ended_at": None, "exit_code": None},
        "7": {"state": "PENDING", "state_reason": "BeginTime", "restarts": 1, "started_at": None},
        "8": {"state": "PENDING", "state_reason": "JobHeldUser"},
        "15": {"state": "PENDING", "state_reason": "Resources", "num_gpus": 2, "gpu_type": None,
               "started_at": None},
    },
    final={
        "2": {"state": "FAILED", "exit_code": 3},
        "4_1": {"state": "PENDING", "job_id_raw": 4, "array_task_id": 1, "exit_code": None},
        "4_2": {"state": "PENDING", "job_id_raw": 4, "array_task_id": 2},
        "5": {"state": "RUNNING", "exit_code": None, "ended_at": None, "comment": None},
        "7": {"state": "PENDING", "submitted_at": _utc("2026-11-22T19:53:34"),
              "started_at": None, "node_list": None},
        "8": {"state": "PENDING", "node_list": None, "mem_mb": 100},
    },
)  # fmt: skip
"""Pending, running and ended jobs at one moment; array 4 is part done, job 7 requeued."""

SCENARIOS = (END, LIVE)


# --- the pyslurm stand-in's records --------------------------------------------------------


def _ts(moment: datetime | None) -> int:
    """Return a unix timestamp, 0 for None, as Slurm's records hold it."""
    return 0 if moment is None else int(moment.timestamp())


def _wait_status(code: int | None, signal: int | None) -> int:
    """Return the raw wait status Slurm stores for exit code / signal."""
    if signal:
        return signal
    return (code or 0) << 8


def _tres(job: Job) -> str | None:
    """Return the TRES string Slurm would hold for the job's allocation."""
    if job.num_cpus is None:
        return None
    parts = [f"cpu={job.num_cpus}"]
    if job.mem_mb is not None:
        parts.append(f"mem={job.mem_mb}M")
    parts.append(f"node={job.num_nodes or 1}")
    parts.append(f"billing={job.num_cpus}")
    if job.num_gpus:
        parts.append(f"gres/gpu={job.num_gpus}")
        if job.gpu_type and "," not in job.gpu_type:
            parts.append(f"gres/gpu:{job.gpu_type}={job.num_gpus}")
    return ",".join(parts)


def _raw_stdio(scenario: Scenario) -> dict[str, tuple[str, str]]:
    """Return squeue's unexpanded STDOUT and STDERR per JobArrayID: what slurmctld holds."""
    names = formats.SQUEUE_FIELDS
    out, err = names.index("STDOUT"), names.index("STDERR")
    paths = {}
    for line in scenario.squeue_text.splitlines():
        fields = line[:-1].split("|", len(names) - 1)
        paths[fields[0]] = (fields[out], fields[err])
    return paths


def _std_out(raw: str, job: Job) -> str | None:
    """Return the std_out slurmctld holds: NULL where squeue printed its own default."""
    return None if raw == f"{job.work_dir}/slurm-{job.job_id_raw}.out" else raw


def _grouped(jobs: Iterable[Job]) -> Iterator[tuple[Job, str | None]]:
    """Yield each record once: pending tasks that share a raw id are one meta record (`1,2`)."""
    seen: dict[int, list[Job]] = {}
    order: list[Job] = []
    for job in jobs:
        key = job.job_id_raw
        if job.array_task_id is not None and key in seen and job.state.value == "PENDING":
            seen[key].append(job)
            continue
        seen.setdefault(key, []).append(job)
        order.append(job)
    for job in order:
        tasks = seen[job.job_id_raw]
        if len(tasks) > 1 or (job.state.value == "PENDING" and job.job_id_raw == job.array_job_id):
            yield job, ",".join(str(task.array_task_id) for task in tasks)
        else:
            yield job, None


def controller_records(scenario: Scenario) -> list[dict[str, Any]]:
    """Return the scenario's squeue jobs as slurm_job_info_t-like records for the stand-in."""
    history = {job.job_id: job for job in scenario.accounting_jobs()}
    stdio = _raw_stdio(scenario)
    records = []
    for job, task_str in _grouped(scenario.controller_jobs()):
        done = history.get(job.job_id)
        ran = job.node_list is not None
        std_out, std_err = stdio[job.job_id]
        records.append(
            {
                "job_id": job.job_id_raw,
                "array_job_id": job.array_job_id or 0,
                "array_task_id": NO_VAL
                if task_str or job.array_task_id is None
                else job.array_task_id,
                "array_task_str": task_str,
                "name": job.name,
                "user_name": job.user_name,
                "account": job.account,
                "partition": job.partition,
                "nodes": job.node_list,
                "num_nodes": job.num_nodes or 0,
                "num_cpus": job.num_cpus or 0,
                "pn_min_memory": (job.mem_mb or 0) // (job.num_nodes or 1),
                "job_state": job.state.value,
                "state_reason": job.state_reason or "None",
                "exit_code": _wait_status(done.exit_code, done.exit_signal) if done else 0,
                "submit_time": _ts(job.submitted_at),
                "start_time": _ts(job.started_at),
                "end_time": _ts(job.ended_at),
                "work_dir": job.work_dir,
                "comment": job.comment,
                "restart_cnt": job.restarts or 0,
                "batch_flag": 1,
                "std_out": _std_out(std_out, job),
                "std_err": None if std_err == std_out else _std_out(std_err, job),
                "tres_alloc_str": _tres(job) if ran else None,
                "tres_req_str": _tres(job),
            }
        )
    return records


def accounting_records(scenario: Scenario) -> list[dict[str, Any]]:
    """Return the scenario's sacct jobs as slurmdb_job_rec_t-like records for the stand-in."""
    records = []
    for job, task_str in _grouped(scenario.accounting_jobs()):
        ran = job.node_list is not None
        steps = []
        if ran:
            steps.append(
                {
                    "step_id": "batch",
                    "max_rss_bytes": round((job.max_rss_mb or 0) * 2**20),
                    "tot_cpu_sec": int(job.total_cpu_seconds or 0),
                }
            )
        records.append(
            {
                "jobid": job.job_id_raw,
                "array_job_id": job.array_job_id or 0,
                "array_task_id": NO_VAL
                if task_str or job.array_task_id is None
                else job.array_task_id,
                "array_task_str": task_str,
                "jobname": job.name,
                "user_name": job.user_name,
                "account": job.account,
                "partition": job.partition,
                "nodes": job.node_list or "None assigned",
                "state": job.state.value,
                "exitcode": _wait_status(job.exit_code, job.exit_signal),
                "submit": _ts(job.submitted_at),
                "eligible": 0 if job.job_id in scenario.never_eligible else _ts(job.submitted_at),
                "start": _ts(job.started_at),
                "end": _ts(job.ended_at),
                "elapsed": job.elapsed_seconds or 0,
                "work_dir": job.work_dir,
                "derived_es": job.comment,
                "restart_cnt": 0,
                "req_cpus": job.num_cpus or 0,
                "tres_alloc_str": _tres(job) if ran else None,
                "tres_req_str": _tres(job),
                "steps": steps,
            }
        )
    return records


# --- fake Slurm client programs ------------------------------------------------------------

FAKE_PROGRAM = r"""
import json, os, sys, time

program, args = sys.argv[1], sys.argv[2:]
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "behaviour.json")) as handle:
    behaviour = json.load(handle)
with open(os.path.join(here, "calls.jsonl"), "a") as handle:
    handle.write(json.dumps([program, *args]) + "\n")
mode = behaviour.get("modes", {}).get(program, "ok")
if mode == "exit":
    sys.stderr.write("\n%s: error: Unable to contact slurm controller (connect failure)\n"
                     "second line\n" % program)
    sys.exit(1)
if mode == "sleep":
    time.sleep(30)
if mode == "garbage":
    sys.stdout.write("this is not | what you asked for\n")
    sys.exit(0)
if program == "scontrol" and args[:1] == ["--version"]:
    sys.stdout.write("slurm 22.05.8\n")
    sys.exit(0)
source = behaviour["files"][program]
if program == "sacct" and "-S" in args and behaviour["files"].get("window"):
    source = behaviour["files"]["window"]
with open(source) as handle:
    lines = handle.read().splitlines(keepends=True)
if program == "squeue":
    lines = [line for line in lines if line.split("|")[0] not in behaviour["purged"]]
if program == "sacct" and "-j" in args:
    wanted = set(args[args.index("-j") + 1].split(","))
    def selected(line):
        # slurmdbd: id_job or id_array_job in the plain ids; (array, task) pairs for `A_T`,
        # which a task still inside its array's pending record (`4_[1-2%1]`) does not match.
        job_id, raw = line.split("|")[:2]
        base, raw = job_id.split(".")[0], raw.split(".")[0]
        return base in wanted or raw in wanted or base.split("_")[0] in wanted
    lines = [line for line in lines if selected(line)]
sys.stdout.write("".join(lines))
"""


@dataclass
class FakeSlurm:
    """Fake squeue/sacct/scontrol executables in a directory, printing the scenario's text."""

    directory: Path
    scenario: Scenario
    programs: dict[str, str] = field(default_factory=dict)

    def install(self) -> FakeSlurm:
        """Write the programs and return self."""
        self.directory.mkdir(parents=True, exist_ok=True)
        script = self.directory / "fake_slurm.py"
        script.write_text(FAKE_PROGRAM)
        for program in ("squeue", "sacct", "scontrol"):
            path = self.directory / program
            path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" {program} "$@"\n')
            path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            self.programs[program] = str(path)
        self.behave()
        return self

    def behave(self, **modes: str) -> None:
        """Set each program's mode: ok (default), exit, sleep or garbage."""
        files = {
            "squeue": str(FIXTURES / self.scenario.squeue_file),
            "sacct": str(FIXTURES / self.scenario.sacct_file),
            "scontrol": str(FIXTURES / self.scenario.config_file),
        }
        if self.scenario.window_file:
            files["window"] = str(FIXTURES / self.scenario.window_file)
        behaviour = {"files": files, "modes": modes, "purged": sorted(self.scenario.purged)}
        (self.directory / "behaviour.json").write_text(json.dumps(behaviour))

    def calls(self) -> list[list[str]]:
        """Return the argv (program name first) of every call so far."""
        log = self.directory / "calls.jsonl"
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]
