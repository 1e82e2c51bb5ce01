"""CPU and memory use of running jobs from one `sstat` call, and Slurm's TRES usage strings.

`sstat` on Slurm 22.05 has no TotalCPU field (sacct has). Each step's CPU time so far is the
`cpu=` of `TRESUsageInTot` (summed over its tasks), else `AveCPU` x `NTasks`. Without `-a`
sstat shows only srun steps, not the `.batch` step that runs the batch script, so `-a` is
always passed. sstat prints raw job ids (`57.batch` for array task `55_0`), so jobs are asked
for and keyed by their raw id. A job that ended or has no running step is simply absent: sstat
prints `couldn't get steps for job N` on stderr and still exits 0.

A job's live usage: `max_rss_mb` is the largest MaxRSS of its running steps (as the sacct
parser folds MaxRSS over steps), `total_cpu_seconds` the sum of their CPU time. Steps that
already ended are gone from sstat, so both cover the running steps only; the final values come
from sacct when the job ends.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from hpcsync.errors import SchedulerUnavailable
from hpcsync.slurm.parsers import none_if_null, parse_duration, parse_size_mb

logger = logging.getLogger(__name__)

SSTAT_FIELDS: tuple[str, ...] = ("JobID", "MaxRSS", "AveCPU", "NTasks", "TRESUsageInTot")
"""Fields for `sstat -a --parsable2 --noheader --format=`; all exist in Slurm 22.05."""

_SIZES = frozenset({"mem", "vmem", "gres/gpumem"})
"""TRES usage entries that are sizes (unit suffix, or bytes when bare)."""


@dataclass(frozen=True, slots=True)
class LiveUsage:
    """A running job's use so far over its running steps; None where no step reported it."""

    max_rss_mb: float | None
    total_cpu_seconds: float | None
    steps: int = 0


@dataclass(frozen=True, slots=True)
class TresUsage:
    """One TRES usage string (`TRESUsageInAve`, `...InMax`, `...InTot`) read into numbers.

    Sizes are MB (1024-based like the rest of hpcsync; a bare number is bytes, as sacct
    prints with `--noconvert`), `cpu` is seconds. `gpu_util` is Slurm's `gres/gpuutil` as it
    reports it: a percentage that Slurm's GPU plugin (23.02+, `AccountingStorageTRES` with
    `gres/gpuutil`) reads per task process, so a task using several GPUs can exceed 100.
    """

    cpu_seconds: float | None = None
    mem_mb: float | None = None
    vmem_mb: float | None = None
    gpu_util: float | None = None
    gpu_mem_mb: float | None = None
    other: dict[str, float] = field(default_factory=dict)
    """Every other numeric entry (`energy`, `pages`, `fs/disk` bytes, ...), by TRES name."""


def sstat_args(job_ids: Iterable[str | int]) -> list[str]:
    """Return sstat's arguments for these job ids (duplicates dropped, order kept)."""
    ids = ",".join(dict.fromkeys(str(job_id) for job_id in job_ids))
    return ["-a", "--parsable2", "--noheader", f"--format={','.join(SSTAT_FIELDS)}", "-j", ids]


def parse_sstat(text: str) -> dict[str, LiveUsage]:
    """Return each job's live usage, keyed by raw job id, from `sstat_args` output.

    Raises SchedulerUnavailable for a line that does not have the asked-for fields.
    """
    # sstat repeats a step when two asked-for ids select it (an array's own id is also
    # a task's raw id), so steps are keyed by their full id and counted once.
    steps: dict[str, tuple[str, float | None, float | None]] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        values = line.split("|")
        if len(values) != len(SSTAT_FIELDS):
            raise SchedulerUnavailable(
                f"sstat line {lineno}: expected {len(SSTAT_FIELDS)} fields, got {len(values)}: "
                f"{line[:120]!r}"
            )
        row = dict(zip(SSTAT_FIELDS, values, strict=True))
        try:
            rss = parse_size_mb(row["MaxRSS"], default_unit="K")
            cpu = _step_cpu(row)
        except ValueError as exc:
            raise SchedulerUnavailable(f"sstat line {lineno}: {exc}") from None
        step_id = row["JobID"].strip()
        steps[step_id] = (_raw_job_id(step_id), rss, cpu)
    usage: dict[str, LiveUsage] = {}
    for job_id, rss, cpu in steps.values():
        old = usage.get(job_id, LiveUsage(None, None, 0))
        usage[job_id] = LiveUsage(
            _max(old.max_rss_mb, rss), _sum(old.total_cpu_seconds, cpu), old.steps + 1
        )
    return usage


def parse_tres_usage(text: str) -> TresUsage:
    """Return a TRES usage string (`cpu=00:00:01,gres/gpuutil=53,mem=12M`) as numbers.

    Empty or `N/A` gives an empty TresUsage. Raises ValueError for a value that is not a
    number, size or duration where one is expected.
    """
    value = none_if_null(text)
    if value is None:
        return TresUsage()
    numbers: dict[str, float] = {}
    cpu: float | None = None
    for item in value.split(","):
        name, sep, raw = item.partition("=")
        name, raw = name.strip(), raw.strip()
        if not sep or not name or none_if_null(raw) is None:
            continue
        if name == "cpu":
            cpu = parse_duration(raw)
        elif name in _SIZES:
            numbers[name] = float(raw) / 1024**2 if raw[-1:].isdigit() else _size_mb(raw)
        else:
            numbers[name] = float(raw)
    return TresUsage(
        cpu_seconds=cpu,
        mem_mb=numbers.pop("mem", None),
        vmem_mb=numbers.pop("vmem", None),
        gpu_util=numbers.pop("gres/gpuutil", None),
        gpu_mem_mb=numbers.pop("gres/gpumem", None),
        other=numbers,
    )


def live_usage(
    job_ids: Iterable[str | int],
    env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
    sstat: str = "sstat",
) -> dict[str, LiveUsage]:
    """Return the live usage of these running jobs (raw ids) from one sstat call.

    Jobs sstat does not report (ended, pending, no running step) are absent. Raises
    SchedulerUnavailable when sstat cannot run, times out, fails or prints what cannot be read.
    """
    wanted = {str(job_id) for job_id in job_ids}
    if not wanted:
        return {}
    ordered: list[str] = sorted(wanted, key=_sort_key)
    argv = [sstat, *sstat_args(ordered)]
    logger.debug("running %s", shlex.join([*argv[:-1], f"<{len(wanted)} job ids>"]))
    started = time.monotonic()
    try:
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=timeout,
            env=None if env is None else dict(env),
            check=False,
        )
    except FileNotFoundError:
        raise SchedulerUnavailable(f"sstat: {sstat} not found on PATH") from None
    except subprocess.TimeoutExpired:
        raise SchedulerUnavailable(f"sstat: no answer within {timeout:g} s (timeout)") from None
    except OSError as exc:
        raise SchedulerUnavailable(f"sstat: could not run {sstat}: {exc}") from exc
    if result.returncode != 0:
        first = next((line for line in result.stderr.splitlines() if line.strip()), "")
        raise SchedulerUnavailable(
            f"sstat exited with status {result.returncode}: {first.strip() or 'no message'}"
        )
    found = {
        job_id: usage for job_id, usage in parse_sstat(result.stdout).items() if job_id in wanted
    }
    logger.debug(
        "sstat reported %d of %d jobs in %.2f s (%d stderr lines)",
        len(found),
        len(wanted),
        time.monotonic() - started,
        len(result.stderr.splitlines()),
    )
    return found


def _raw_job_id(text: str) -> str:
    """Return the job part of a step id: `57` of `57.batch`, `12` of `12+1.0`."""
    return text.strip().split(".", 1)[0].split("+", 1)[0]


def _step_cpu(row: Mapping[str, str]) -> float | None:
    """Return a step's CPU seconds over all its tasks; None when sstat gave none."""
    total = parse_tres_usage(row["TRESUsageInTot"]).cpu_seconds
    if total is not None:
        return total
    average = parse_duration(row["AveCPU"])
    tasks = none_if_null(row["NTasks"])
    if average is None:
        return None
    return average * (int(tasks) if tasks and tasks.isdigit() else 1)


def _size_mb(text: str) -> float:
    """Return a size with a unit (`1024M`) in MB; raises ValueError."""
    size = parse_size_mb(text)
    if size is None:
        raise ValueError(f"not a size: {text!r}")
    return size


def _max(old: float | None, new: float | None) -> float | None:
    if old is None:
        return new
    return old if new is None else max(old, new)


def _sum(old: float | None, new: float | None) -> float | None:
    if old is None:
        return new
    return old if new is None else old + new


def _sort_key(job_id: str) -> tuple[int, str]:
    return (int(job_id), "") if job_id.isdigit() else (0, job_id)
