"""squeue and sacct text for N jobs, in the exact format hpcsync asks for, and programs that print it.

The lines copy the shapes of the captured 22.05 output in tests/fixtures/slurm/: squeue's
24 fields each followed by `|` (Comment last), sacct's 21 fields without a trailing `|`.
Jobs are tagged `experiment=bench-<k> run=r<N> tags=a,b`; a tenth are array tasks (arrays of
100, as `squeue -r` prints them: `100_7|100|100|7|...`). `running` jobs (the first ones) run on
`node[001-064]` with their output at `<log_dir>/slurm-<id>.out`; the others are pending, every
fifth held. The user is the one running the benchmark (hpcsync reads only files its job's user
owns).
"""

from __future__ import annotations

import getpass
import stat
from dataclasses import dataclass
from pathlib import Path

from hpcsync.slurm import formats

SUBMIT = "2026-11-22T19:53:29"
START = "2026-11-22T19:54:02"
ARRAY_SIZE = 100
USER = getpass.getuser()
"""The jobs' user: the log files the benchmark writes are this user's, as hpcsync requires."""
FIRST_ID = 100_000


@dataclass(frozen=True)
class BenchJob:
    """One job as the generated output shows it."""

    job_id: str
    raw_id: int
    array_id: int | None
    task: int | None
    running: bool


def bench_jobs(count: int, running: int = 0) -> list[BenchJob]:
    """Return `count` jobs: plain jobs, then every tenth block of 100 as one array."""
    jobs: list[BenchJob] = []
    next_id = FIRST_ID
    while len(jobs) < count:
        if len(jobs) % 1000 >= 900 and count - len(jobs) >= ARRAY_SIZE:
            array_id = next_id
            for task in range(ARRAY_SIZE):
                live = len(jobs) < running
                raw = next_id + task if live else array_id
                jobs.append(BenchJob(f"{array_id}_{task}", raw, array_id, task, live))
            next_id += ARRAY_SIZE
        else:
            jobs.append(BenchJob(str(next_id), next_id, None, None, len(jobs) < running))
            next_id += 1
    return jobs


def squeue_line(job: BenchJob, work_dir: str, log_dir: str) -> str:
    """Return the job's line of `squeue -a -r -t all -h -O <squeue_format()>` output."""
    number = job.raw_id if job.array_id is None else job.array_id
    comment = f"experiment=bench-{number % 7} run=r{job.job_id} tags=a,b"
    array_id = "N/A" if job.array_id is None else str(job.array_id)
    task = "N/A" if job.task is None else str(job.task)
    out = f"{log_dir}/slurm-{job.job_id}.out"
    if job.running:
        node = f"node{job.raw_id % 64 + 1:03d}"
        state, reason, start, end = "RUNNING", "None", START, "NONE"
        tres = "cpu=4,mem=16G,node=1,billing=4,gres/gpu=1,gres/gpu:a100=1"
    else:
        node = ""
        state = "PENDING"
        reason = "JobHeldUser" if job.raw_id % 5 == 0 else "Priority"
        start, end = "N/A", "N/A"
        tres = "cpu=4,mem=16G,node=1,billing=4"
    fields = [
        job.job_id,
        str(job.raw_id),
        array_id,
        task,
        "train",
        state,
        reason,
        USER,
        "ml",
        "gpu",
        node,
        "1",
        "4",
        "16G",
        tres,
        "gres:gpu:1",
        SUBMIT,
        start,
        end,
        work_dir,
        out,
        out,
        "0",
        comment,
    ]
    assert len(fields) == len(formats.SQUEUE_FIELDS)
    return "|".join(fields) + "|"


def sacct_line(job: BenchJob, work_dir: str, state: str = "COMPLETED") -> str:
    """Return the job's allocation line of `sacct --parsable2 --format=<sacct_format()>`."""
    number = job.raw_id if job.array_id is None else job.array_id
    comment = f"experiment=bench-{number % 7} run=r{job.job_id} tags=a,b"
    fields = [
        job.job_id,
        str(job.raw_id),
        "train",
        state,
        "0:0",
        USER,
        "ml",
        "gpu",
        f"node{job.raw_id % 64 + 1:03d}",
        "1",
        "4",
        "16G",
        "billing=4,cpu=4,gres/gpu:a100=1,gres/gpu=1,mem=16G,node=1",
        SUBMIT,
        START,
        "2026-11-22T20:54:02",
        "3600",
        "01:00:00",
        "",
        work_dir,
        comment,
    ]
    assert len(fields) == len(formats.SACCT_FIELDS)
    return "|".join(fields)


def write_outputs(
    directory: Path, count: int, running: int = 0, log_dir: str | None = None
) -> list[BenchJob]:
    """Write squeue.txt (all jobs) and an empty sacct.txt; return the jobs."""
    directory.mkdir(parents=True, exist_ok=True)
    work_dir = str(directory / "work")
    jobs = bench_jobs(count, running)
    lines = [squeue_line(job, work_dir, log_dir or work_dir) for job in jobs]
    (directory / "squeue.txt").write_text("\n".join(lines) + "\n")
    (directory / "sacct.txt").write_text("")
    return jobs


FAKE = """#!/bin/sh
# Fake {program}: prints the benchmark's text, whatever it is asked.
echo "$0 $*" >> {calls}
exec cat {source}
"""


def install_programs(directory: Path) -> dict[str, str]:
    """Write fake squeue, sacct, sstat and scontrol into directory/bin; return their paths."""
    bin_dir = directory / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    config = directory / "scontrol.txt"
    config.write_text(
        "Configuration data as of 2026-11-22T19:53:29\n"
        "AccountingStoreFlags    = job_comment\n"
        "ClusterName             = bench\n"
        "SLURM_VERSION           = 22.05.8\n"
    )
    (directory / "sstat.txt").write_text("")
    sources = {
        "squeue": directory / "squeue.txt",
        "sacct": directory / "sacct.txt",
        "sstat": directory / "sstat.txt",
        "scontrol": config,
    }
    programs: dict[str, str] = {}
    for program, source in sources.items():
        path = bin_dir / program
        path.write_text(FAKE.format(program=program, calls=directory / "calls.log", source=source))
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        programs[program] = str(path)
    return programs


def program_calls(directory: Path) -> list[str]:
    """Return the fake programs' calls so far, one `program args` string each."""
    log = directory / "calls.log"
    if not log.exists():
        return []
    return [Path(line.split(" ", 1)[0]).name for line in log.read_text().splitlines()]
