"""Benchmark 3, freshness: from a log line or a state change to its row in the database.

    python -m bench.freshness [--trials 6] [--interval 5] [--poll 5] [--no-cluster]

Log lines. `hpcsync run` runs on fake Slurm programs that show 100 tagged jobs, 10 of them
running with their own log files, with `logs.observer` set to `polling` or `inotify` and
`logs.poll_interval = --interval`. One live log gets a metric line at a random moment; the
benchmark polls the database every 10 ms for its row. Under inotify the daemon's log tick is
brought forward by the watcher's events; under polling it runs every `logs.poll_interval`.
The figure is the worst of the trials (their median in the note).

State changes (test cluster): `hpcsync run` with `slurm.poll_interval = --poll` tracks a held
tagged job; the benchmark releases it and watches squeue itself (every 0.1 s) and the
database (every 50 ms). Figures: from squeue first showing RUNNING, and then the job's end,
until the run's status says so.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import daemon
from bench.common import Figure, median_of, spread, wait_for
from bench.polling import testbed_env
from bench.slurm_output import install_programs, write_outputs

MODES = ("polling", "inotify")
JOBS = 100
LIVE = 10
"""Fake Slurm shows JOBS tagged jobs, LIVE of them running, each with its own log file."""


def _metric_row(database: Path, name: str, step: int) -> Callable[[], bool]:
    connection = sqlite3.connect(database, check_same_thread=False)

    def present() -> bool:
        query = "SELECT 1 FROM metrics WHERE name = ? AND step = ?"
        try:
            return connection.execute(query, (name, step)).fetchone() is not None
        except sqlite3.OperationalError:  # the daemon has not made the schema yet
            return False

    return present


def log_freshness(mode: str, trials: int, interval: float) -> list[float]:
    """Return the seconds from each appended line to its visible row, under `hpcsync run`."""
    rng = random.Random(42)
    with tempfile.TemporaryDirectory(prefix="hpcsync-bench-fresh-", dir="/var/tmp") as name:
        directory = Path(name)
        log_dir = directory / "logs"
        log_dir.mkdir()
        made = write_outputs(directory, JOBS, running=LIVE, log_dir=str(log_dir))
        for job in made[:LIVE]:
            (log_dir / f"slurm-{job.job_id}.out").write_text("step=0 fresh_loss=1.0\n")
        log = log_dir / f"slurm-{made[0].job_id}.out"
        programs = install_programs(directory)
        env = dict(os.environ)
        env["PATH"] = str(Path(programs["squeue"]).parent) + os.pathsep + env.get("PATH", "")
        env.pop("SLURM_CONF", None)
        database = directory / "bench.db"
        config = daemon.write_config(
            directory / "config.toml",
            {
                "": {"state_dir": str(directory / "state"), "cluster_name": "bench"},
                "database": {"url": f"sqlite:///{database}"},
                "slurm": {"backend": "cli", "usage_interval": 0},
                "logs": {"observer": mode, "poll_interval": interval},
            },
        )
        output = directory / "daemon.log"
        process = daemon.start(config, env, output)
        latencies: list[float] = []
        try:
            if not wait_for(_metric_row(database, "fresh_loss", 0), 120, step=0.05):
                raise RuntimeError(f"{mode}: the daemon never read the log:\n{output.read_text()}")
            for trial in range(1, trials + 1):
                time.sleep(rng.uniform(0.2, interval))
                present = _metric_row(database, "fresh_loss", trial)
                with log.open("a") as handle:
                    handle.write(f"step={trial} fresh_loss={trial / 10}\n")
                written = time.monotonic()
                if not wait_for(present, interval * 3 + 10, step=0.01):
                    raise RuntimeError(f"{mode}: line {trial} never reached the database")
                latencies.append(time.monotonic() - written)
        finally:
            code = daemon.stop(process)
        if code not in (0, None):
            raise RuntimeError(f"hpcsync run exited {code}:\n{output.read_text()[-3000:]}")
    print(f"  log line, {mode:8s}: {spread(latencies, 2)} s", flush=True)
    return latencies


def _squeue_state(env: dict[str, str], job_id: str) -> str:
    done = subprocess.run(
        ["squeue", "-h", "-j", job_id, "-o", "%T"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or "GONE"


def state_freshness(trials: int, poll: float) -> dict[str, list[float]] | None:
    """Return, per transition, the seconds from Slurm showing it to the run's row showing it."""
    env = testbed_env()
    if env is None:
        print("  state change: skipped, the test cluster is not up (scripts/slurm-testbed start)")
        return None
    found: dict[str, list[float]] = {"running": [], "completed": []}
    with tempfile.TemporaryDirectory(prefix="hpcsync-bench-state-", dir="/var/tmp") as name:
        directory = Path(name)
        database = directory / "bench.db"
        config = daemon.write_config(
            directory / "config.toml",
            {
                "": {"state_dir": str(directory / "state"), "cluster_name": "hpctest"},
                "database": {"url": f"sqlite:///{database}"},
                "slurm": {
                    "backend": "cli",
                    "poll_interval": poll,
                    "usage_interval": 0,
                    "catchup_days": 0,
                },
            },
        )
        output = directory / "daemon.log"
        process = daemon.start(config, env, output)
        job_ids: list[str] = []
        try:
            if not daemon.wait_log(output, "polled", 60, process):
                raise RuntimeError("hpcsync run did not poll:\n" + output.read_text()[-2000:])
            for trial in range(trials):
                job_id = _submit_held(env, directory, trial, seconds=max(3, round(2 * poll)))
                job_ids.append(job_id)
                for want, seconds in _state_trial(env, database, job_id, poll).items():
                    found[want].append(seconds)
                print(
                    f"  state change, job {job_id}: running after "
                    f"{found['running'][-1]:.2f} s, completed after {found['completed'][-1]:.2f} s",
                    flush=True,
                )
        finally:
            daemon.stop(process)
            if job_ids:
                subprocess.run(["scancel", *job_ids], env=env, check=False)
    return found


def _submit_held(env: dict[str, str], directory: Path, trial: int, seconds: int) -> str:
    """Submit a held tagged job that sleeps `seconds` once released; return its id."""
    submitted = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--hold",
            f"--comment=experiment=bench-fresh run=t{trial}",
            f"--chdir={directory}",
            "--output=/dev/null",
            "--mem=10M",
            f"--wrap=sleep {seconds}",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return submitted.stdout.strip().split(";")[0]


def _state_trial(env: dict[str, str], database: Path, job_id: str, poll: float) -> dict[str, float]:
    """Release a held job; return, per transition, seconds from squeue showing it to its row."""
    status = _run_status(database, job_id)
    if not wait_for(lambda: status() == "pending", poll * 3 + 10, step=0.1):
        raise RuntimeError(f"job {job_id} never appeared as a pending run")
    time.sleep(random.uniform(0, poll))  # release at a random moment of the poll interval
    subprocess.run(["scontrol", "release", job_id], env=env, check=True)
    found: dict[str, float] = {}
    for want, states, statuses in (
        ("running", {"RUNNING", "COMPLETING", "COMPLETED", "GONE"}, {"running", "completed"}),
        ("completed", {"COMPLETED", "GONE"}, {"completed"}),
    ):
        if not wait_for(lambda states=states: _squeue_state(env, job_id) in states, 120, 0.1):
            raise RuntimeError(f"job {job_id} never reached {want} in squeue")
        seen = time.monotonic()
        if not wait_for(lambda wanted=statuses: status() in wanted, poll * 3 + 30, step=0.05):
            raise RuntimeError(f"run of job {job_id} never became {want}")
        found[want] = time.monotonic() - seen
    return found


def _run_status(database: Path, job_id: str) -> Callable[[], str | None]:
    def status() -> str | None:
        try:
            connection = sqlite3.connect(database, timeout=1)
            try:
                row = connection.execute(
                    "SELECT status FROM runs WHERE slurm_job_id = ?", (job_id,)
                ).fetchone()
            finally:
                connection.close()
        except sqlite3.Error:
            return None
        return None if row is None else str(row[0])

    return status


def main(argv: list[str] | None = None) -> list[Figure]:
    """Run the freshness benchmark; return its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--interval", type=float, default=5.0, help="logs.poll_interval")
    parser.add_argument("--poll", type=float, default=5.0, help="slurm.poll_interval")
    parser.add_argument("--no-cluster", action="store_true")
    args = parser.parse_args(argv)
    print(f"freshness: {args.trials} trials per mode, logs tick every {args.interval:g} s")
    figures: list[Figure] = []
    for mode in MODES:
        latencies = log_freshness(mode, args.trials, args.interval)
        target = f"<= {args.interval + 1:g}" if mode == "polling" else "<= 2"
        figures.append(
            Figure(
                f"log line to row, {mode}",
                max(latencies),
                "s",
                target,
                f"worst of {len(latencies)}; median {median_of(latencies):.2f} s",
            )
        )
    if not args.no_cluster:
        found = state_freshness(max(2, args.trials // 2), args.poll)
        if found:
            for want, latencies in found.items():
                figures.append(
                    Figure(
                        f"Slurm state to row, {want}",
                        max(latencies),
                        "s",
                        "",
                        f"worst of {len(latencies)}; median {median_of(latencies):.2f} s; "
                        f"slurm.poll_interval {args.poll:g} s",
                    )
                )
    return figures


if __name__ == "__main__":
    from bench.common import figures_table

    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    print(figures_table(main()))
