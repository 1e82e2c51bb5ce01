"""Benchmark (not a test): ingest a 1,000,000-point job log into committed rows.

    .venv/bin/python bench/ingest.py [--points N] [--backend sqlite|postgresql|all]

The log mixes `step=N loss=.. acc=..` lines, JSON lines and tqdm redraws (`\\r` segments, the
noise of a real job). Each backend runs in its own process, so the peak RSS printed is that
of one ingestion. PostgreSQL is tried at $HPCSYNC_TEST_POSTGRES_URL or
postgresql+psycopg://postgres@127.0.0.1:5432 and skipped when unreachable.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, func, select, text
from sqlalchemy.exc import OperationalError

from hpcsync.db.repository import Repository
from hpcsync.db.tables import metrics
from hpcsync.ingest import LogIngester
from hpcsync.models import Job, JobState, Run, RunStatus

POINTS_PER_STEP = 4
POSTGRES_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
BENCH_DATABASE = "hpcsync_bench"


def write_log(path: Path, points: int) -> int:
    """Write a log holding `points` metric points among noise; return its size in bytes."""
    steps = points // POINTS_PER_STEP
    with path.open("w", encoding="utf-8") as handle:
        handle.write("Loading dataset from /scratch/data (1.2M samples)\n")
        handle.write("optimizer: StepLR step_size=30 gamma=0.1\n")
        for step in range(steps):
            done = step % 100
            handle.write(
                f"\r{done:3d}%|{'#' * (done // 10):10s}| {done}/100 [00:0{step % 10}<00:01, 42.0it/s]"
                f"\r{done:3d}%|{'#' * (done // 10):10s}| {done}/100 [00:0{step % 10}<00:01, 41.7it/s]\n"
            )
            handle.write(f"step={step} loss={1 / (step + 1):.6f} acc={step / steps:.6f}\n")
            handle.write(
                json.dumps({"step": step, "val_loss": round(2 / (step + 1), 6), "lr": 1e-3}) + "\n"
            )
            if step % 1000 == 0:
                handle.write(f"Saving checkpoints/epoch={step // 1000}-step={step}.pt\n")
    return path.stat().st_size


def database_url(backend: str, directory: Path) -> str | None:
    """Return an empty database's URL for the backend, or None when it is unreachable."""
    if backend == "sqlite":
        return f"sqlite:///{directory / 'bench.db'}"
    server = os.environ.get("HPCSYNC_TEST_POSTGRES_URL", POSTGRES_SERVER + "/postgres")
    server = server.rsplit("/", 1)[0]
    try:
        admin = create_engine(server + "/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {BENCH_DATABASE}"))
            connection.execute(text(f"CREATE DATABASE {BENCH_DATABASE}"))
        admin.dispose()
    except OperationalError as exc:
        print(f"postgresql: skipped, not reachable ({str(exc).splitlines()[0]})")
        return None
    return f"{server}/{BENCH_DATABASE}"


def run_one(backend: str, points: int) -> None:
    """Write the log, ingest it into an empty database, and print the figures."""
    with tempfile.TemporaryDirectory(prefix="hpcsync-bench-") as name:
        directory = Path(name)
        url = database_url(backend, directory)
        if url is None:
            return
        log_path = directory / "slurm-424242.out"
        size = write_log(log_path, points)
        repository = Repository.from_url(url)
        repository.ensure_schema()
        job = Job(
            job_id="424242",
            job_id_raw=424242,
            state=JobState.RUNNING,
            stdout_path=str(log_path),
            stderr_path=str(log_path),
            submitted_at=datetime.now(UTC),
        )
        run = repository.save_runs(
            [(Run("bench", "bench", job, RunStatus.RUNNING), False, [])], datetime.now(UTC)
        )[0]
        ingester = LogIngester(repository, observer="polling")
        rss_before = _peak_rss_mb()
        began = time.perf_counter()
        ingester.track([run])
        stats = ingester.ingest()
        elapsed = time.perf_counter() - began
        ingester.close()
        with repository.atomic() as connection:
            rows = connection.execute(select(func.count()).select_from(metrics)).scalar_one()
        repository.dispose()
        print(
            f"{backend:10s} {rows:,} rows committed of {points:,} points, {stats.lines:,} lines, "
            f"{size / 1e6:.0f} MB in {elapsed:.1f} s: {rows / elapsed:,.0f} points/s, "
            f"{size / 1e6 / elapsed:.1f} MB/s; peak RSS {_peak_rss_mb():.0f} MB "
            f"(before ingesting {rss_before:.0f} MB)"
        )
        if rows != points:
            raise SystemExit(f"{backend}: expected {points} rows, found {rows}")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    """Run the benchmark for the chosen backends, each in a fresh process."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "all"], default="all")
    args = parser.parse_args()
    if args.backend != "all":
        run_one(args.backend, args.points)
        return
    for backend in ("sqlite", "postgresql"):
        command = [sys.executable, __file__, "--backend", backend, "--points", str(args.points)]
        subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
