"""Pure parsers: squeue, sacct and scontrol text in, Job records out."""

from __future__ import annotations

import dataclasses
import functools
import re
import sys
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, tzinfo
from hashlib import blake2b
from typing import Any

from hpcsync.errors import SchedulerUnavailable
from hpcsync.models import Job, JobState
from hpcsync.slurm import formats
from hpcsync.slurm.patterns import default_output, expand_pattern

_NULLS = frozenset({"", "N/A", "None", "NONE", "Unknown", "(null)", "None assigned", "n/a"})
_UNITS_MB = {"K": 1 / 1024, "M": 1.0, "G": 1024.0, "T": 1024.0**2, "P": 1024.0**3}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([KMGTP]?)([cn]?)$")
_TASKS = re.compile(r"^\d+(?:-\d+(?::\d+)?)?(?:,\d+(?:-\d+(?::\d+)?)?)*$")
_ARRAY_ID = re.compile(r"^(\d+)_(\d+|\[[^\]]*\])$")
_GPU_TRES = re.compile(r"^gres[/:]gpu(?::([^=:]+))?[=:](\d+)$")


def none_if_null(text: str) -> str | None:
    """Return the text stripped, or None for Slurm's words for nothing (`N/A`, `(null)`, ...)."""
    text = text.strip()
    return None if text in _NULLS else text


def parse_time(text: str, tz: tzinfo) -> datetime | None:
    """Return Slurm's zone-less local time as aware UTC, None if unset; ValueError if no time."""
    value = none_if_null(text)
    if value is None:
        return None
    return datetime.fromisoformat(value).replace(tzinfo=tz).astimezone(UTC)


def parse_size_mb(text: str, default_unit: str = "M") -> float | None:
    """Return a size (`100M`, `1.50G`, `100Mc`) in MB, None if unset; ValueError if no size."""
    value = none_if_null(text)
    if value is None:
        return None
    match = _SIZE.match(value)
    if match is None:
        raise ValueError(f"not a size: {value!r}")
    return float(match.group(1)) * _UNITS_MB[match.group(2) or default_unit]


def parse_duration(text: str) -> float | None:
    """Return `[D-]HH:MM:SS` or `MM:SS.mmm` as seconds, None if unset; ValueError otherwise."""
    value = none_if_null(text)
    if value is None:
        return None
    days, _, clock = value.rpartition("-")
    parts = clock.split(":")
    if len(parts) > 3 or not all(parts):
        raise ValueError(f"not a duration: {value!r}")
    seconds = 0.0
    for part in parts:
        seconds = seconds * 60 + float(part)
    return seconds + (int(days) * 86400 if days else 0)


def parse_tres(text: str) -> dict[str, str]:
    """Return a TRES string (`cpu=2,mem=200M,gres/gpu:a100=1`) as a dict; empty if unset."""
    value = none_if_null(text)
    if value is None:
        return {}
    pairs = (item.split("=", 1) for item in value.split(",") if "=" in item)
    return {key.strip(): count.strip() for key, count in pairs}


def parse_gpus(text: str) -> tuple[int | None, str | None]:
    """Return GPU (count, type) from TRES `gres/gpu:a100=2` or GRES `gres:gpu:a100:2`."""
    # Several types are joined by commas; a bad count raises ValueError.
    value = none_if_null(text)
    if value is None:
        return None, None
    untyped: int | None = None
    typed: dict[str, int] = {}
    for item in value.split(","):
        match = _GPU_TRES.match(item.strip())
        if match is None:
            continue
        gpu_type, count = match.group(1), int(match.group(2))
        if gpu_type is None:
            untyped = (untyped or 0) + count
        else:
            typed[gpu_type] = typed.get(gpu_type, 0) + count
    total = untyped if untyped is not None else (sum(typed.values()) if typed else None)
    return total, (",".join(sorted(typed)) or None)


def expand_task_ids(text: str) -> list[int]:
    """Return the task ids of an array range (`0-3`, `1,5-9:2`, `[1-2%1]`); ValueError if none."""
    value = text.strip().strip("[]").split("%", 1)[0]
    if not _TASKS.match(value):
        raise ValueError(f"not an array range: {text!r}")
    tasks: list[int] = []
    for part in value.split(","):
        bounds, _, step = part.partition(":")
        low, _, high = bounds.partition("-")
        tasks.extend(range(int(low), int(high or low) + 1, int(step or 1)))
    return tasks


def selected_by(job: Job, job_ids: Iterable[str]) -> bool:
    """Say whether `sacct -j <job_ids>` means this job: by its id, its raw id, or its array's id."""
    wanted = set(job_ids)
    if job.job_id in wanted or str(job.job_id_raw) in wanted:
        return True
    return job.array_job_id is not None and str(job.array_job_id) in wanted


def parse_version(text: str) -> str:
    """Return the version in `scontrol --version` or `show config` text; SchedulerUnavailable if none."""
    config = _config_values(text)
    if "SLURM_VERSION" in config:
        return config["SLURM_VERSION"]
    match = re.search(r"^slurm(?:-wlm)?\s+(\d+\.\d+\S*)", text.strip(), re.MULTILINE)
    if match is None:
        raise SchedulerUnavailable("scontrol printed no Slurm version")
    return match.group(1)


def parse_cluster_name(show_config_text: str) -> str:
    """Return ClusterName from `scontrol show config` output; raises SchedulerUnavailable if absent."""
    name = _config_values(show_config_text).get("ClusterName")
    if not name or none_if_null(name) is None:
        raise SchedulerUnavailable("scontrol show config printed no ClusterName")
    return name


def parse_config_value(show_config_text: str, key: str) -> str:
    """Return one `scontrol show config` value, `""` when it is unset or absent."""
    return none_if_null(_config_values(show_config_text).get(key, "")) or ""


def _config_values(text: str) -> dict[str, str]:
    """Return the `Key = Value` lines of `scontrol show config` as a dict."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and " " not in key.strip():
            values[key.strip()] = value.strip()
    return values


class _Row:
    """One line of squeue or sacct output, split into named fields, with located errors."""

    def __init__(self, program: str, lineno: int, fields: dict[str, str]) -> None:
        self.program = program
        self.lineno = lineno
        self.fields = fields

    def error(self, name: str, problem: str) -> SchedulerUnavailable:
        """Return the one-line error naming this line and field."""
        raw = self.fields.get(name, "")[:60]
        return SchedulerUnavailable(f"{self.program} line {self.lineno}: {name} {problem}: {raw!r}")

    def text(self, name: str) -> str | None:
        """Return the field, None if unset."""
        return none_if_null(self.fields[name])

    def integer(self, name: str) -> int:
        """Return the field as an int; raise SchedulerUnavailable if it is not one."""
        value = self.optional_integer(name)
        if value is None:
            raise self.error(name, "is empty")
        return value

    def optional_integer(self, name: str) -> int | None:
        """Return the field as an int, None if unset."""
        value = self.text(name)
        if value is None:
            return None
        try:
            return int(value)
        except ValueError:
            raise self.error(name, "is not an integer") from None

    def time(self, name: str, tz: tzinfo) -> datetime | None:
        """Return the field as aware UTC, None if unset."""
        try:
            return parse_time(self.fields[name], tz)
        except ValueError:
            raise self.error(name, "is not a time") from None

    def size_mb(self, name: str, default_unit: str = "M") -> float | None:
        """Return the field as MB, None if unset."""
        try:
            return parse_size_mb(self.fields[name], default_unit)
        except ValueError:
            raise self.error(name, "is not a size") from None

    def gpus(self, name: str) -> tuple[int | None, str | None]:
        """Return (count, type) of GPUs in a TRES/GRES field."""
        try:
            return _cached_gpus(self.fields[name])
        except ValueError:
            raise self.error(name, "has a bad GPU count") from None

    def duration(self, name: str) -> float | None:
        """Return the field as seconds, None if unset."""
        try:
            return parse_duration(self.fields[name])
        except ValueError:
            raise self.error(name, "is not a duration") from None

    def tasks(self, name: str) -> list[int]:
        """Return the task ids an array range field names."""
        try:
            return expand_task_ids(self.fields[name])
        except ValueError:
            raise self.error(name, "is not an array task range") from None


def _rows(program: str, text: str, names: tuple[str, ...], trailing: bool) -> Iterator[_Row]:
    """Yield each non-blank line split into the named fields, the last keeping any `|` inside it."""
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield _row(program, lineno, line, names, trailing)


def _row(program: str, lineno: int, line: str, names: tuple[str, ...], trailing: bool) -> _Row:
    body = line
    if trailing:
        if not body.endswith("|"):
            raise SchedulerUnavailable(f"{program} line {lineno}: no trailing '|' after Comment")
        body = body[:-1]
    parts = body.split("|", len(names) - 1)
    if len(parts) != len(names):
        raise SchedulerUnavailable(
            f"{program} line {lineno}: expected {len(names)} fields, got {len(parts)}"
        )
    return _Row(program, lineno, dict(zip(names, parts, strict=True)))


def _mb(value: float | None) -> int | None:
    """Return MB rounded to a whole number."""
    return None if value is None else round(value)


def _started(state: JobState, node_list: str | None, start: datetime | None) -> datetime | None:
    """Return the start time only if the job really started (squeue shows estimates otherwise)."""
    if state is JobState.PENDING or (state.is_terminal and node_list is None):
        return None
    return start


def parse_squeue(text: str, tz: tzinfo) -> list[Job]:
    """Return the jobs in `squeue -h -O <squeue_format()>` text; SchedulerUnavailable if unparseable."""
    return parse_squeue_reusing(text, tz, {})[0]


SqueueLines = dict[bytes, tuple[Job, ...]]
"""The jobs of each squeue line, by a 128-bit hash of the line's text (smaller than the text)."""


def parse_squeue_reusing(
    text: str, tz: tzinfo, known: SqueueLines
) -> tuple[list[Job], SqueueLines]:
    """Return what `parse_squeue` does, and the jobs of each line to pass in as `known` next time.

    A line found unchanged in `known` is not parsed again: in a steady cycle, nearly every line
    (a pending or held job) is the same text as in the last one. Jobs are immutable, so the
    reused ones are the same as parsing again would give.
    """
    jobs: list[Job] = []
    lines: SqueueLines = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        key = blake2b(line.encode(), digest_size=16).digest()
        parsed = known.get(key)
        if parsed is None:
            if not line.strip():
                continue
            row = _row("squeue", lineno, line, formats.SQUEUE_FIELDS, trailing=True)
            parsed = tuple(_squeue_jobs(row, tz))
        lines[key] = parsed
        jobs.extend(parsed)
    return jobs, lines


def _squeue_jobs(row: _Row, tz: tzinfo) -> list[Job]:
    """Return the job (or, for an unexpanded array range, the tasks) on one squeue line."""
    state = _cached_state(row.fields["State"])
    node_list = row.text("NodeList")
    num_cpus = row.optional_integer("NumCPUs")
    mem = _mb(_tres_mem(row, "tres-alloc"))
    if mem is None:
        mem = _mb(row.size_mb("MinMemory"))
    num_gpus, gpu_type = row.gpus("tres-alloc")
    num_nodes = row.optional_integer("NumNodes")
    if num_gpus is None:
        num_gpus, gpu_type = row.gpus("tres-per-node")
        if num_gpus is not None and num_nodes:
            num_gpus *= num_nodes
    values: dict[str, Any] = {
        "job_id": row.text("JobArrayID") or str(row.integer("JobID")),
        "job_id_raw": row.integer("JobID"),
        "state": state,
        "name": sys.intern(row.fields["Name"].strip()),
        "state_reason": _shared(row.text("Reason")),
        "user_name": _shared(row.text("UserName")),
        "account": _shared(row.text("Account")),
        "partition": _shared(row.text("Partition")),
        "node_list": _shared(node_list),
        "num_nodes": num_nodes,
        "num_cpus": num_cpus,
        "mem_mb": mem,
        "num_gpus": num_gpus,
        "gpu_type": gpu_type,
        "submitted_at": row.time("SubmitTime", tz),
        "started_at": _started(state, node_list, row.time("StartTime", tz)),
        "ended_at": row.time("EndTime", tz) if state.is_terminal else None,
        "work_dir": _shared(row.text("WorkDir")),
        "restarts": row.optional_integer("RestartCnt"),
        "comment": row.text("Comment"),
    }
    if row.text("ArrayTaskID") is None:
        return [_with_paths(Job(**values), row)]
    array_job_id = row.integer("ArrayJobID")
    values["array_job_id"] = array_job_id
    jobs = []
    for task in row.tasks("ArrayTaskID"):
        values["job_id"] = f"{array_job_id}_{task}"
        values["array_task_id"] = task
        jobs.append(_with_paths(Job(**values), row))
    return jobs


def _shared(text: str | None) -> str | None:
    """Return one shared copy of a text that thousands of jobs repeat (user, partition, ...)."""
    # The tracker holds every live job: 10,000 copies of the same words are megabytes.
    return None if text is None else sys.intern(text)


def _tres_mem(row: _Row, name: str) -> float | None:
    """Return the `mem=` of a TRES field in MB."""
    try:
        return _tres_mem_mb(row.fields[name])
    except ValueError:
        raise row.error(name, "has a bad mem=") from None


# A poll parses the same few TRES, GRES and state texts for thousands of jobs: remember them.
_CACHE_SIZE = 512
_cached_gpus = functools.lru_cache(maxsize=_CACHE_SIZE)(parse_gpus)
_cached_state = functools.lru_cache(maxsize=_CACHE_SIZE)(JobState.parse)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _tres_mem_mb(text: str) -> float | None:
    """Return the `mem=` of a TRES text in MB, None without one; ValueError if it is no size."""
    tres = parse_tres(text)
    return parse_size_mb(tres["mem"]) if "mem" in tres else None


def _with_paths(job: Job, row: _Row) -> Job:
    """Return the new job with its STDOUT/STDERR patterns expanded, fixing squeue's array default."""
    # squeue prints `<work_dir>/slurm-<raw id>.out` for a batch job without --output, but an
    # array task writes `slurm-%A_%a.out`.
    squeue_default = f"{job.work_dir}/slurm-{job.job_id_raw}.out"
    paths: list[str | None] = []
    for name in ("STDOUT", "STDERR"):
        raw = row.text(name)
        if paths and raw == row.text("STDOUT"):
            paths.append(paths[0])  # StdErr is usually StdOut: expand it once
        elif raw is None:
            paths.append(None)
        elif raw == squeue_default:
            paths.append(default_output(job))
        elif raw[0] == "/" and "%" not in raw and "\\" not in raw:
            paths.append(raw)  # what expand_pattern returns for a plain absolute path
        else:
            paths.append(expand_pattern(raw, job))
    # The job was made by the caller and nobody else holds it yet: set the paths in place
    # rather than copy its 30 fields (a copy per job was a fifth of a 10,000-job poll).
    object.__setattr__(job, "stdout_path", paths[0])
    object.__setattr__(job, "stderr_path", paths[1])
    return job


def parse_sacct(text: str, tz: tzinfo) -> list[Job]:
    """Return the jobs in `sacct --parsable2` text, steps folded in; SchedulerUnavailable if unparseable."""
    # A step line (`12.batch`, `10_1.0`) follows its job line: MaxRSS is the largest over the
    # steps. A later record of the same job (`--duplicates`) replaces the earlier one.
    records: dict[str, list[Job]] = {}
    max_rss: dict[str, float] = {}
    step_cpu: dict[str, float] = {}
    for row in _rows("sacct", text, formats.SACCT_FIELDS, trailing=False):
        base, dot, _ = row.fields["JobID"].strip().partition(".")
        if not dot:
            records.pop(base, None)  # keep insertion order of the latest record
            records[base] = _sacct_jobs(row, tz)
            max_rss.pop(base, None)
            step_cpu.pop(base, None)
            continue
        rss = row.size_mb("MaxRSS", default_unit="K")
        if rss:  # a step that ended before its first sample shows nothing
            max_rss[base] = max(rss, max_rss.get(base, 0.0))
        cpu = row.duration("TotalCPU")
        if cpu is not None:
            step_cpu[base] = step_cpu.get(base, 0.0) + cpu
    folded: list[Job] = []
    for base, jobs in records.items():
        for job in jobs:
            total_cpu = job.total_cpu_seconds
            if total_cpu is None and base in step_cpu:
                total_cpu = step_cpu[base]
            folded.append(
                dataclasses.replace(job, max_rss_mb=max_rss.get(base), total_cpu_seconds=total_cpu)
            )
    return folded


def _sacct_jobs(row: _Row, tz: tzinfo) -> list[Job]:
    """Return the job (or, for a pending array range, the tasks) on one sacct allocation line."""
    state = _cached_state(row.fields["State"])
    exit_code, exit_signal = _exit_code(row)
    node_list = row.text("NodeList")
    num_cpus = row.optional_integer("NCPUS")
    num_nodes = row.optional_integer("NNodes")
    mem = _tres_mem(row, "AllocTRES")
    if mem is None:
        mem = _req_mem(row, num_cpus, num_nodes)
    num_gpus, gpu_type = row.gpus("AllocTRES")
    job_id = row.fields["JobID"].strip()
    job = Job(
        job_id=job_id,
        job_id_raw=row.integer("JobIDRaw"),
        state=state,
        name=row.fields["JobName"].strip(),
        exit_code=exit_code if state.is_terminal else None,
        exit_signal=exit_signal if state.is_terminal else None,
        user_name=row.text("User"),
        account=row.text("Account"),
        partition=row.text("Partition"),
        node_list=node_list,
        num_nodes=num_nodes,
        num_cpus=num_cpus,
        mem_mb=_mb(mem),
        num_gpus=num_gpus,
        gpu_type=gpu_type,
        submitted_at=row.time("Submit", tz),
        started_at=_started(state, node_list, row.time("Start", tz)),
        ended_at=row.time("End", tz) if state.is_terminal else None,
        work_dir=row.text("WorkDir"),
        comment=row.text("Comment"),
        elapsed_seconds=row.optional_integer("ElapsedRaw"),
        total_cpu_seconds=row.duration("TotalCPU"),
    )
    match = _ARRAY_ID.match(job_id)
    if match is None:
        return [job]
    array_job_id = int(match.group(1))
    try:
        tasks = expand_task_ids(match.group(2))
    except ValueError:
        raise row.error("JobID", "is not an array task range") from None
    return [
        dataclasses.replace(
            job, job_id=f"{array_job_id}_{task}", array_job_id=array_job_id, array_task_id=task
        )
        for task in tasks
    ]


def _req_mem(row: _Row, num_cpus: int | None, num_nodes: int | None) -> float | None:
    """Return ReqMem in MB for the whole job (`100Mc` is per CPU, `100Mn` per node)."""
    if row.fields["ReqMem"].strip().endswith("?"):
        return None  # slurmdbd's stand-in record before the job's own arrives prints `16?`
    per_job = row.size_mb("ReqMem")
    if per_job is None:
        return None
    raw = row.fields["ReqMem"].strip()
    if raw.endswith("c") and num_cpus:
        return per_job * num_cpus
    if raw.endswith("n") and num_nodes:
        return per_job * num_nodes
    return per_job


def _exit_code(row: _Row) -> tuple[int | None, int | None]:
    """Return sacct's ExitCode `3:0` as (exit status, signal)."""
    value = row.text("ExitCode")
    if value is None:
        return None, None
    code, _, signal = value.partition(":")
    try:
        return int(code), int(signal or 0)
    except ValueError:
        raise row.error("ExitCode", "is not exit:signal") from None
