"""Benchmark 1, ingest: a 1,000,000-point job log into committed rows, against MLflow's store.

    python -m bench.ingest [--points N] [--mlflow-points N] [--repeat 3] [--backends sqlite,postgresql]

The log mixes `step=N loss=.. acc=..` lines, JSON lines and tqdm redraws (`\\r` segments, the
noise of a real job): 4 metric points and 4 lines per step, 46 MB for a million points. It is
written once; each measurement is a fresh process and a fresh database:
- hpcsync: the real `LogIngester` (polling observer) reads the whole file, parses it and commits
  the rows with their cursor; points/s is committed rows over wall time, peak RSS is the
  process's.
- MLflow: the same points (parsed before the clock starts) through
  `SqlAlchemyStore.log_batch`, 1,000 per call (MLflow's batch limit), into the same kind of
  database. MLflow does no parsing, so the ratio favours it.
Each is repeated (default 3) and the median taken; the ratio is of the medians of one run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.common import (
    Figure,
    drop_postgres,
    median_of,
    peak_rss_mb,
    postgres_url,
    report,
    run_child,
    spread,
)

POINTS_PER_STEP = 4
DATABASE = "hpcsync_bench_ingest"
MLFLOW_DATABASE = "hpcsync_bench_mlflow"
MLFLOW_BATCH = 1000
BACKENDS = ("sqlite", "postgresql")


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


def _database(backend: str, directory: Path, name: str) -> str | None:
    if backend == "sqlite":
        return f"sqlite:///{directory / (name + '.db')}"
    return postgres_url(name)


def ingest_once(log: Path, backend: str, points: int) -> dict[str, float] | None:
    """Ingest the log into an empty database through the real LogIngester; return the figures."""
    from sqlalchemy import func, select

    from hpcsync.db.repository import Repository
    from hpcsync.db.tables import metrics
    from hpcsync.ingest import LogIngester
    from hpcsync.models import Job, JobState, Run, RunStatus

    with tempfile.TemporaryDirectory(prefix="hpcsync-bench-") as name:
        url = _database(backend, Path(name), DATABASE)
        if url is None:
            return None
        repository = Repository.from_url(url)
        repository.ensure_schema()
        job = Job(
            job_id="424242",
            job_id_raw=424242,
            state=JobState.RUNNING,
            stdout_path=str(log),
            stderr_path=str(log),
            submitted_at=datetime.now(UTC),
        )
        run = repository.save_runs(
            [(Run("bench", "bench", job, RunStatus.RUNNING), False, [])], datetime.now(UTC)
        )[0]
        ingester = LogIngester(repository, observer="polling")
        rss_before = peak_rss_mb()
        began, cpu = time.perf_counter(), time.process_time()
        ingester.track([run])
        stats = ingester.ingest()
        elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
        ingester.close()
        with repository.atomic() as connection:
            rows = connection.execute(select(func.count()).select_from(metrics)).scalar_one()
        repository.dispose()
    if backend == "postgresql":
        drop_postgres(DATABASE)
    if rows != points:
        raise SystemExit(f"{backend}: expected {points} rows, found {rows}")
    return {
        "rows": rows,
        "lines": stats.lines,
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "points_per_s": rows / elapsed,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": rss_before,
    }


def mlflow_once(log: Path, backend: str, points: int) -> dict[str, float] | None:
    """Store the log's first `points` points through MLflow's SqlAlchemyStore.log_batch."""
    import logging

    from hpcsync.logs.lines import clean
    from hpcsync.logs.parsers import MetricParser, StreamState

    logging.disable(logging.WARNING)  # MLflow's migration chatter
    from mlflow.entities import Metric
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    parser, state, values = MetricParser(), StreamState(), []
    with log.open(encoding="utf-8") as handle:
        for raw in handle:
            for segment in raw.split("\r"):
                values.extend(parser.parse(clean(segment.rstrip("\n")), state))
            if len(values) >= points:
                break
    now_ms = int(time.time() * 1000)
    batch = [Metric(v.name, v.value, now_ms, v.step or 0) for v in values[:points]]
    with tempfile.TemporaryDirectory(prefix="hpcsync-bench-mlflow-") as name:
        url = _database(backend, Path(name), MLFLOW_DATABASE)
        if url is None:
            return None
        store = SqlAlchemyStore(url, str(Path(name) / "artifacts"))
        experiment = store.create_experiment("bench")
        run_id = store.create_run(experiment, "bench", now_ms, [], "bench").info.run_id
        began = time.perf_counter()
        for start in range(0, len(batch), MLFLOW_BATCH):
            store.log_batch(run_id, batch[start : start + MLFLOW_BATCH], [], [])
        elapsed = time.perf_counter() - began
        store.engine.dispose()
    if backend == "postgresql":
        drop_postgres(MLFLOW_DATABASE)
    return {"rows": len(batch), "seconds": elapsed, "points_per_s": len(batch) / elapsed}


def measure(
    points: int, mlflow_points: int, repeats: int, backends: list[str], mlflow: bool
) -> list[Figure]:
    """Run every measurement `repeats` times, interleaved; return the medians as figures."""
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="hpcsync-bench-log-") as name:
        log = Path(name) / "slurm-424242.out"
        size = write_log(log, points)
        print(f"ingest: log of {points:,} points, {size / 1e6:.0f} MB", flush=True)
        results: dict[str, list[dict[str, float]]] = {}
        for index in range(repeats):
            for backend in backends:
                for kind in ("hpcsync", "mlflow") if mlflow else ("hpcsync",):
                    count = points if kind == "hpcsync" else mlflow_points
                    args = ["--child", kind, "--log", str(log), "--backend", backend]
                    result = run_child("bench.ingest", [*args, "--points", str(count)])
                    if not result:
                        continue
                    results.setdefault(f"{kind}-{backend}", []).append(result)  # type: ignore[arg-type]
                    print(
                        f"  {index + 1}/{repeats} {kind:7s} {backend:10s} "
                        f"{result['points_per_s']:>9,.0f} points/s"
                        + (
                            f", peak RSS {result['peak_rss_mb']:.0f} MB"
                            if kind == "hpcsync"
                            else ""
                        ),
                        flush=True,
                    )
    targets = {"sqlite": ">= 150000", "postgresql": ">= 100000"}
    for backend in backends:
        ours = results.get(f"hpcsync-{backend}")
        if not ours:
            continue
        rates = [r["points_per_s"] for r in ours]
        cpu_rates = [r["rows"] / r["cpu_seconds"] for r in ours]
        figures.append(
            Figure(
                f"ingest {backend}",
                median_of(rates),
                "points/s",
                targets[backend],
                f"runs {spread(rates)}; by CPU time {median_of(cpu_rates):,.0f}",
            )
        )
        rss = [r["peak_rss_mb"] for r in ours]
        figures.append(
            Figure(
                f"peak RSS, ingest {backend}",
                median_of(rss),
                "MB",
                "<= 150",
                f"runs {spread(rss)}; {median_of([r['rss_before_mb'] for r in ours]):.0f} MB before",
            )
        )
        theirs = results.get(f"mlflow-{backend}")
        if theirs:
            mlflow_rate = median_of([r["points_per_s"] for r in theirs])
            figures.append(
                Figure(
                    f"MLflow log_batch {backend}",
                    mlflow_rate,
                    "points/s",
                    "",
                    f"{mlflow_points:,} points; runs {spread([r['points_per_s'] for r in theirs])}",
                )
            )
            figures.append(
                Figure(
                    f"ratio hpcsync/MLflow {backend}",
                    median_of(rates) / mlflow_rate,
                    "×",
                    ">= 15" if backend == "sqlite" else "",
                    "medians of the same run",
                )
            )
    return figures


def main(argv: list[str] | None = None) -> list[Figure]:
    """Run the benchmark (or, with --child, one measurement) and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument(
        "--mlflow-points",
        type=int,
        default=100_000,
        help="points stored through MLflow per repeat (its rate is flat; 1M takes minutes)",
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--no-mlflow", action="store_true")
    parser.add_argument("--child", choices=["hpcsync", "mlflow"], help=argparse.SUPPRESS)
    parser.add_argument("--log", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--backend", choices=BACKENDS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        once = ingest_once if args.child == "hpcsync" else mlflow_once
        report(once(args.log, args.backend, args.points) or {})
        return []
    backends = [name for name in args.backends.split(",") if name]
    mlflow = not args.no_mlflow and _has_mlflow()
    figures = measure(args.points, args.mlflow_points, args.repeat, backends, mlflow)
    return figures


def _has_mlflow() -> bool:
    # Not imported here: the children must not start from a parent that holds MLflow.
    if importlib.util.find_spec("mlflow") is None:
        print("ingest: MLflow is not installed here; run bench/run for the comparison")
        return False
    return True


if __name__ == "__main__":
    from bench.common import figures_table

    print(figures_table(main()))
    sys.exit(0)
