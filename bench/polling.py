"""Benchmark 2, polling: the CPU and Slurm calls of one steady poll cycle.

    python -m bench.polling [--jobs 10000] [--held 2000] [--cycles 3] [--no-cluster]

Replayed: squeue output of `--jobs` queued jobs (bench/slurm_output.py) printed by fake
`squeue`/`sacct` programs, through the real `CliScheduler`, `JobTracker` and `Repository`
(SQLite, and PostgreSQL when it answers). The first cycle records every job; the steady cycles
after it find nothing changed. CPU is this process's user + system time for the cycle (the
parsing, the diff and the database); the fake programs' own CPU is shown apart.

Real cluster: `--held` tagged jobs submitted held (`sbatch --hold --array=0-999`, as many
arrays as needed) to the test cluster of scripts/slurm-testbed, the same cycles through the
real squeue, then cancelled.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from datetime import UTC
from pathlib import Path

from bench.common import (
    REPO,
    Figure,
    children_cpu_seconds,
    drop_postgres,
    median_of,
    postgres_url,
    spread,
)
from bench.slurm_output import install_programs, write_outputs

DATABASE = "hpcsync_bench_polling"
ARRAY_CHUNK = 1000  # Slurm's default MaxArraySize is 1001


def cycles(scheduler: object, repository: object, count: int, label: str) -> list[dict[str, float]]:
    """Run a first cycle and `count` steady ones; return per-cycle CPU, wall, calls and writes."""
    from hpcsync.sync import JobTracker

    tracker = JobTracker(scheduler, repository, "bench")  # type: ignore[arg-type]
    tracker.load()
    results = []
    for index in range(count + 1):
        calls = dict(scheduler.calls)  # type: ignore[attr-defined]
        cpu, children, wall = time.process_time(), children_cpu_seconds(), time.perf_counter()
        stats = tracker.cycle()
        result = {
            "cpu": time.process_time() - cpu,
            "children_cpu": children_cpu_seconds() - children,
            "wall": time.perf_counter() - wall,
            "squeue": scheduler.calls["squeue"] - calls.get("squeue", 0),  # type: ignore[attr-defined]
            "sacct": scheduler.calls["sacct"] - calls.get("sacct", 0),  # type: ignore[attr-defined]
            "jobs": stats.jobs,
            "changed": stats.changed,
        }
        kind = "first" if index == 0 else "steady"
        print(
            f"  {label} {kind} cycle: {stats.jobs:,} jobs, {stats.changed:,} written, "
            f"{result['cpu']:.2f} s CPU (+{result['children_cpu']:.2f} s in squeue/sacct), "
            f"{result['wall']:.2f} s wall, {result['squeue']} squeue, {result['sacct']} sacct",
            flush=True,
        )
        results.append(result)
    return results


def replayed(jobs: int, count: int, backend: str) -> list[dict[str, float]] | None:
    """Cycles over generated output of `jobs` queued jobs; None when the database is down."""
    from hpcsync.db.repository import Repository
    from hpcsync.slurm.cli import CliScheduler

    with tempfile.TemporaryDirectory(prefix="hpcsync-bench-poll-") as name:
        directory = Path(name)
        write_outputs(directory, jobs)
        programs = install_programs(directory)
        url = (
            f"sqlite:///{directory / 'bench.db'}" if backend == "sqlite" else postgres_url(DATABASE)
        )
        if url is None:
            return None
        repository = Repository.from_url(url)
        repository.ensure_schema()
        scheduler = CliScheduler(squeue=programs["squeue"], sacct=programs["sacct"], tz=UTC)
        try:
            return cycles(scheduler, repository, count, f"{backend:10s} {jobs:,} jobs")
        finally:
            repository.dispose()
            if backend == "postgresql":
                drop_postgres(DATABASE)


def testbed_env() -> dict[str, str] | None:
    """Return the environment for the test cluster's clients, or None when it is not up."""
    script = REPO / "scripts" / "slurm-testbed"
    if not shutil.which("sbatch") or not script.exists():
        return None
    if subprocess.run([script, "status"], capture_output=True, check=False).returncode != 0:
        return None
    env = dict(os.environ)
    exports = subprocess.run([script, "env"], capture_output=True, text=True, check=True).stdout
    for line in exports.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value.strip("'\"")
    return env


def on_cluster(held: int, count: int) -> list[dict[str, float]] | None:
    """Cycles over the test cluster holding `held` held tagged jobs; None when it is not up."""
    from hpcsync.db.repository import Repository
    from hpcsync.slurm.cli import CliScheduler

    env = testbed_env()
    if env is None:
        print("  cluster: skipped, the test cluster is not up (scripts/slurm-testbed start)")
        return None
    array_ids: list[str] = []
    with tempfile.TemporaryDirectory(prefix="hpcsync-bench-held-") as name:
        directory = Path(name)
        try:
            for start in range(0, held, ARRAY_CHUNK):
                size = min(ARRAY_CHUNK, held - start)
                submitted = subprocess.run(
                    [
                        "sbatch",
                        "--parsable",
                        "--hold",
                        f"--array=0-{size - 1}",
                        "--job-name=bench-held",
                        f"--comment=experiment=bench-held run=held-{start} tags=bench",
                        f"--chdir={directory}",
                        "--output=/dev/null",
                        "--mem=10M",
                        "--wrap=true",
                    ],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                array_ids.append(submitted.stdout.strip().split(";")[0])
            repository = Repository.from_url(f"sqlite:///{directory / 'bench.db'}")
            repository.ensure_schema()
            scheduler = CliScheduler(env=env)
            try:
                return cycles(scheduler, repository, count, f"cluster    {held:,} held")
            finally:
                repository.dispose()
        finally:
            if array_ids:
                subprocess.run(["scancel", *array_ids], env=env, check=False)


def summarise(name: str, runs: list[dict[str, float]], target: bool) -> list[Figure]:
    """Return the steady cycles' medians (and the first cycle's cost) as figures."""
    steady = runs[1:]
    cpu = [run["cpu"] for run in steady]
    figures = [
        Figure(
            f"steady cycle CPU, {name}",
            median_of(cpu),
            "s",
            "<= 0.5" if target else "",
            f"cycles {spread(cpu, 2)}; squeue/sacct processes "
            f"{median_of([run['children_cpu'] for run in steady]):.2f} s; wall "
            f"{median_of([run['wall'] for run in steady]):.2f} s; first cycle {runs[0]['cpu']:.1f} s "
            f"CPU writing {runs[0]['changed']:,.0f} runs",
        ),
        Figure(
            f"squeue calls per steady cycle, {name}",
            max(run["squeue"] for run in steady),
            "",
            "<= 1",
        ),
        Figure(
            f"sacct calls per steady cycle, {name}",
            max(run["sacct"] for run in steady),
            "",
            "<= 1",
            f"rows written per steady cycle: {max(run['changed'] for run in steady):.0f}",
        ),
    ]
    return figures


def main(argv: list[str] | None = None) -> list[Figure]:
    """Run the polling benchmark; return its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--held", type=int, default=2_000)
    parser.add_argument("--cycles", type=int, default=3, help="steady cycles after the first")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--no-cluster", action="store_true")
    args = parser.parse_args(argv)
    figures: list[Figure] = []
    print(f"polling: {args.jobs:,} queued jobs replayed, {args.cycles} steady cycles", flush=True)
    for backend in args.backends.split(","):
        runs = replayed(args.jobs, args.cycles, backend)
        if runs:
            figures += summarise(f"{args.jobs:,} jobs, {backend}", runs, target=True)
    if not args.no_cluster:
        runs = on_cluster(args.held, args.cycles)
        if runs:
            figures += summarise(f"test cluster, {args.held:,} held", runs, target=False)
    return figures


if __name__ == "__main__":
    from bench.common import figures_table

    print(figures_table(main()))
