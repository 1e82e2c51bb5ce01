"""Issue #4's acceptance on the real Slurm: GPU jobs sample the fake NVML; runs get their usage.

Four jobs are submitted together, once per module. Each starts `hpcsync sample --interval 1` in
the background, does its work, then stops the sampler with SIGTERM and waits for it:
- `gpu1` (`--gres=gpu:1`) and `gpu2` (`--gres=gpu:2`) see the fake libnvidia-ml.so.1, whose NVML
  index is not the minor number, and hold ~150 MB while burning CPU for a few seconds;
- `cpu` has no GPU and the same workload; its sampler finds no GPU and exits at once;
- `nonvml` has a GPU but an empty directory on LD_LIBRARY_PATH: a node without NVML.
Two trackers with their ingesters (SQLite, PostgreSQL) poll through the CLI backend, and the
live usage refresh (one sstat call per round) runs while the jobs do. Which GPUs Slurm gave a
job is read from the job's own log (`SLURM_JOB_GPUS`), so the checks hold whichever job got
which device; the samples must then be the fake's values for the device with that minor.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from hpcsync.db.metric_store import RunGpu, load_metrics, load_run_gpus
from hpcsync.db.repository import Repository
from hpcsync.db.tables import runs
from hpcsync.ingest import IngestStats, LogIngester, ended_runs
from hpcsync.slurm.cli import CliScheduler
from hpcsync.sync import JobTracker
from hpcsync.usage_refresh import refresh_live_usage

DEADLINE = 180.0
POLL = 1.0
WORK_SECONDS = 16  # the gather samples every 5 s; leave live rounds room on a busy machine
"""Long enough for jobacct_gather (every 5 s on the testbed) to sample the 150 MB."""
BUILD_SCRIPT = Path(__file__).parents[1] / "fake_nvml" / "build.py"
SAMPLER = Path(sys.executable).parent / "hpcsync"
# The fake NVML's devices by minor number (tests/fake_nvml/README.md); NVML index 0 is minor 1.
DEVICES: dict[int, dict[str, Any]] = {
    0: {
        "uuid": "GPU-00000000-0000-4000-8000-000000000000",
        "name": "Fake GPU minor0",
        "utilization_percentage": 30.0,
        "memory_usage_megabytes": 3000.0,
        "power_usage_watts": 150.0,
    },
    1: {
        "uuid": "GPU-11111111-1111-4111-8111-111111111111",
        "name": "Fake GPU minor1",
        "utilization_percentage": 71.0,
        "memory_usage_megabytes": 7100.0,
        "power_usage_watts": 271.0,
    },
}
MEASURES = ("utilization_percentage", "memory_usage_megabytes", "power_usage_watts")
WORKLOAD = f"""{sys.executable} -c '
import time
block = b"x" * (150 << 20)
print("holding", len(block) >> 20, "MB", flush=True)
end = time.time() + {WORK_SECONDS}
while time.time() < end:
    pass
'"""
SCRIPT = """#!/bin/bash
export LD_LIBRARY_PATH={lib}
echo "job gpus=${{SLURM_JOB_GPUS:-none}}"
{sampler} sample --interval 1 --output '{work}/hpcsync-%j-%N.gpu.jsonl' &
SAMPLER=$!
{work_command}
kill -TERM $SAMPLER 2>/dev/null
wait $SAMPLER
echo "sampler exit $?"
"""
JOBS: dict[str, tuple[str, ...]] = {
    "gpu1": ("--gres=gpu:1", "--cpus-per-task=1", "--mem=400M"),
    "nonvml": ("--gres=gpu:1", "--cpus-per-task=1", "--mem=200M"),
    "cpu": ("--cpus-per-task=1", "--mem=400M"),
    "gpu2": ("--gres=gpu:2", "--cpus-per-task=2", "--mem=400M"),
}
DATABASES = ["sqlite", "postgresql"]


@dataclass
class Pair:
    """One database with the tracker and ingester that feed it."""

    repository: Repository
    tracker: JobTracker
    ingester: LogIngester
    stats: IngestStats = field(default_factory=IngestStats)
    live: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per job name: the largest live max_rss_mb and cpu_efficiency seen while it ran."""


@dataclass
class Outcome:
    """Per database and job name: the run row, its GPUs and metrics; the jobs' logs."""

    job_ids: dict[str, str] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)
    rows: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    gpus: dict[str, dict[str, list[RunGpu]]] = field(default_factory=dict)
    metrics: dict[str, dict[str, dict[str, dict[int, float]]]] = field(default_factory=dict)
    live: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def slurm_gpus(self, name: str) -> list[int]:
        """Return the GPU indices Slurm gave the job, as the job printed them."""
        match = re.search(r"^job gpus=(\S+)$", self.logs[name], re.MULTILINE)
        assert match is not None, self.logs[name]
        return [] if match.group(1) == "none" else [int(x) for x in match.group(1).split(",")]


def _build_fake_nvml(out_dir: Path) -> Path:
    spec = importlib.util.spec_from_file_location("fake_nvml_build", BUILD_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if module.find_compiler() is None:
        pytest.skip("no C compiler (cc) to build the fake NVML library")
    directory: Path = module.build_fake_nvml(out_dir)
    return directory


def _pairs(cluster: Any, work: Path, tmp: Path, make_pg: Callable[[str], str]) -> dict[str, Pair]:
    urls = {
        "sqlite": f"sqlite:///{tmp / 'gpu-jobs.db'}",
        "postgresql": make_pg("hpcsync_test_gpu_jobs"),
    }
    pairs: dict[str, Pair] = {}
    for name, url in urls.items():
        repository = Repository.from_url(url)
        repository.ensure_schema()
        scheduler = CliScheduler(env=cluster.env, timeout=30)
        tracker = JobTracker(scheduler, repository, scheduler.cluster_name())
        ingester = LogIngester(repository, roots=[str(work)], observer="polling")
        pairs[name] = Pair(repository, tracker, ingester)
    return pairs


def _row(repository: Repository, job_id: str) -> dict[str, Any] | None:
    with repository.atomic() as connection:
        row = connection.execute(select(runs).where(runs.c.slurm_job_id == job_id)).mappings()
        found = row.first()
    return None if found is None else dict(found)


def _sync(cluster: Any, pair: Pair, job_ids: dict[str, str]) -> None:
    """One round: poll Slurm, read the files, refresh live usage and note what it wrote."""
    stats = pair.tracker.cycle()
    changed = [run for run, _ in stats.changes]
    live_runs = pair.tracker.live_runs
    pair.stats.add(pair.ingester.follow(live_runs, ended_runs(changed, live_runs)))
    refresh_live_usage(pair.repository, live_runs, env=cluster.env, timeout=30)
    for name, job_id in job_ids.items():
        row = _row(pair.repository, job_id)
        if row is None or row["final"] or row["status"] != "running":
            continue
        seen = pair.live.setdefault(name, {})
        for column in ("max_rss_mb", "cpu_efficiency"):
            if row[column] is not None:
                seen[column] = max(seen.get(column, 0.0), row[column])


def _all_final(pairs: dict[str, Pair], job_ids: dict[str, str]) -> bool:
    for pair in pairs.values():
        for job_id in job_ids.values():
            row = _row(pair.repository, job_id)
            if row is None or not row["final"]:
                return False
    return True


def _collect(pair: Pair, job_id: str) -> tuple[dict[str, Any], list[RunGpu], dict[str, Any]]:
    row = _row(pair.repository, job_id)
    assert row is not None
    with pair.repository.atomic() as connection:
        gpus = load_run_gpus(connection, row["id"])
        points = load_metrics(connection, row["id"])
    metrics: dict[str, dict[int, float]] = {}
    for point in points:
        metrics.setdefault(point.name, {})[point.step] = point.value
    return row, gpus, metrics


@pytest.fixture(scope="module")
def outcome(
    slurm_cluster: Any,
    tmp_path_factory: pytest.TempPathFactory,
    make_postgres_database: Callable[[str], str],
) -> Iterator[Outcome]:
    cluster = slurm_cluster
    work = Path(cluster.workdir("gpu-jobs"))
    lib = _build_fake_nvml(work / "nvml")
    empty = work / "no-nvml"
    empty.mkdir()
    pairs = _pairs(cluster, work, tmp_path_factory.mktemp("gpu-jobs"), make_postgres_database)
    result = Outcome()
    began = time.monotonic()
    try:
        for name, options in JOBS.items():
            script = SCRIPT.format(
                lib=empty if name == "nonvml" else lib,
                sampler=SAMPLER,
                work=work,
                work_command="sleep 2" if name == "nonvml" else WORKLOAD,
            )
            result.job_ids[name] = cluster.sbatch(
                f"--chdir={work}",
                f"--output={work}/%x-%j.out",
                f"--job-name={name}",
                "--time=5",
                f"--comment=experiment=gpu-jobs run={name}",
                *options,
                script=script,
            )
        deadline = time.monotonic() + DEADLINE
        while not _all_final(pairs, result.job_ids):
            if time.monotonic() > deadline:
                states = {n: cluster.state(j) for n, j in result.job_ids.items()}
                pytest.fail(f"jobs not final after {DEADLINE:.0f} s: {states}")
            for pair in pairs.values():
                _sync(cluster, pair, result.job_ids)
            time.sleep(POLL)
        result.seconds = time.monotonic() - began
        for name, job_id in result.job_ids.items():
            result.logs[name] = (work / f"{name}-{job_id}.out").read_text(errors="replace")
        for database, pair in pairs.items():
            result.rows[database], result.gpus[database] = {}, {}
            result.metrics[database] = {}
            for name, job_id in result.job_ids.items():
                row, gpus, metrics = _collect(pair, job_id)
                result.rows[database][name] = row
                result.gpus[database][name] = gpus
                result.metrics[database][name] = metrics
            result.live[database] = pair.live
            result.failures[database] = pair.stats.failures
        yield result
    finally:
        for pair in pairs.values():
            pair.ingester.close()
            pair.repository.dispose()
        for job_id in result.job_ids.values():
            if cluster.state(job_id) in ("RUNNING", "PENDING"):
                cluster.scancel(job_id)


def _gpu_metrics(metrics: dict[str, dict[int, float]]) -> dict[str, dict[int, float]]:
    return {name: steps for name, steps in metrics.items() if name.startswith("system/")}


@pytest.mark.parametrize("database", DATABASES)
@pytest.mark.parametrize("name", ["gpu1", "gpu2"])
def test_samples_are_the_jobs_gpus_matched_by_minor(
    outcome: Outcome, database: str, name: str
) -> None:
    given = outcome.slurm_gpus(name)
    assert len(given) == (1 if name == "gpu1" else 2)
    metrics = _gpu_metrics(outcome.metrics[database][name])
    expected_names = set()
    for i, minor in enumerate(given):
        device = DEVICES[minor]  # Slurm's index N is /dev/nvidiaN: the device with minor N
        for measure in MEASURES:
            metric = f"system/gpu_{i}_{measure}"
            expected_names.add(metric)
            steps = metrics.get(metric, {})
            assert len(steps) >= 3, (metric, steps)
            assert set(steps.values()) == {device[measure]}, (metric, steps)
        expected_names.add(f"system/gpu_{i}_memory_usage_percentage")
        assert set(metrics[f"system/gpu_{i}_memory_usage_percentage"].values()) == {
            round(device["memory_usage_megabytes"] / 40000 * 100, 1)
        }
    # Nothing for GPUs the job was not given, and no temperature (left out of the fake).
    assert set(metrics) == expected_names
    assert outcome.failures[database] == 0


@pytest.mark.parametrize("database", DATABASES)
@pytest.mark.parametrize("name", ["gpu1", "gpu2"])
def test_run_gpus_name_the_physical_gpus(outcome: Outcome, database: str, name: str) -> None:
    given = outcome.slurm_gpus(name)
    gpus = outcome.gpus[database][name]
    assert [(g.node, g.i, g.minor, g.uuid, g.name) for g in gpus] == [
        ("localhost", i, minor, DEVICES[minor]["uuid"], DEVICES[minor]["name"])
        for i, minor in enumerate(given)
    ]
    assert {g.driver for g in gpus} == {"999.99-fake"}


@pytest.mark.parametrize("database", DATABASES)
@pytest.mark.parametrize("name", ["gpu1", "gpu2"])
def test_gpu_util_mean_is_the_fakes_utilisation(outcome: Outcome, database: str, name: str) -> None:
    given = outcome.slurm_gpus(name)
    expected = sum(DEVICES[m]["utilization_percentage"] for m in given) / len(given)
    assert outcome.rows[database][name]["gpu_util_mean"] == pytest.approx(expected)


@pytest.mark.parametrize("database", DATABASES)
@pytest.mark.parametrize("name", ["gpu1", "gpu2", "cpu"])
def test_usage_summary_is_plausible_for_150_mb(outcome: Outcome, database: str, name: str) -> None:
    row = outcome.rows[database][name]
    assert row["status"] == "completed"
    assert row["slurm_state"] == "COMPLETED"
    assert 120 <= row["max_rss_mb"] < 400, row["max_rss_mb"]
    assert 0 < row["cpu_efficiency"] <= 1, row["cpu_efficiency"]


@pytest.mark.parametrize("database", DATABASES)
@pytest.mark.parametrize("name", ["gpu1", "cpu"])
def test_live_usage_was_written_while_running(outcome: Outcome, database: str, name: str) -> None:
    live = outcome.live[database].get(name, {})
    assert live.get("max_rss_mb", 0) >= 120, live
    assert 0 < live.get("cpu_efficiency", 0) <= 1, live


@pytest.mark.parametrize("database", DATABASES)
@pytest.mark.parametrize("name", ["cpu", "nonvml"])
def test_cpu_only_and_no_nvml_jobs_break_nothing(
    outcome: Outcome, database: str, name: str
) -> None:
    row = outcome.rows[database][name]
    assert row["status"] == "completed"
    assert row["gpu_util_mean"] is None
    assert outcome.gpus[database][name] == []
    assert _gpu_metrics(outcome.metrics[database][name]) == {}
    assert "sampler exit 0" in outcome.logs[name]
    if name == "nonvml":
        assert outcome.slurm_gpus(name) != []
        assert "NVML is not available" in outcome.logs[name]
    else:
        assert outcome.slurm_gpus(name) == []


def test_figures(outcome: Outcome) -> None:
    """Print what was measured (run pytest with -s to see it)."""
    figures = {
        "seconds": round(outcome.seconds, 1),
        "job_ids": outcome.job_ids,
        "slurm_gpus": {name: outcome.slurm_gpus(name) for name in outcome.job_ids},
        "runs": {
            database: {
                name: {
                    key: row[key]
                    for key in (
                        "max_rss_mb",
                        "cpu_efficiency",
                        "gpu_util_mean",
                        "total_cpu_seconds",
                        "elapsed_seconds",
                        "num_cpus",
                    )
                }
                for name, row in rows.items()
            }
            for database, rows in outcome.rows.items()
        },
        "live": outcome.live,
        "samples": {
            name: {metric: len(steps) for metric, steps in _gpu_metrics(metrics).items()}
            for name, metrics in outcome.metrics["sqlite"].items()
        },
    }
    print(json.dumps(figures, indent=1, default=str))
    assert figures["seconds"] < DEADLINE
