"""Issue #3's acceptance on the real Slurm: a job's log becomes exact metrics, through a requeue.

One job serves every check, once per module. While it runs it writes `key=value` and JSON lines
among progress bars, ANSI colour and decoys, with one line split across two writes three
seconds apart. Two trackers with their ingesters (SQLite with inotify, PostgreSQL with stat()
polling) poll it through the CLI backend. Once its first attempt has written everything, it is
requeued: the restart truncates the log and writes it again, resuming from "step 4" with new
values, as a job restarted from a checkpoint does. The restart is made eligible at once
(`StartTime=now`) so the module takes well under a minute instead of Slurm's ~2 min delay.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hpcsync.db.metric_store import load_metrics
from hpcsync.db.repository import Repository
from hpcsync.ingest import IngestStats, LogIngester
from hpcsync.logs.watcher import ObserverKind
from hpcsync.models import Run
from hpcsync.slurm.cli import CliScheduler
from hpcsync.sync import CycleStats, JobTracker

DEADLINE = 240.0
POLL = 1.0
SPLIT_AT = 5

SCRIPT = r"""#!/bin/bash
A=${SLURM_RESTART_COUNT:-0}
echo "attempt $A on $(hostname)"
printf '\033[1;32mINFO\033[0m loading data from /scratch/data\n'
echo "optimizer: StepLR step_size=30 gamma=0.1"
if [ "$A" = 0 ]; then FIRST=1; LAST=6; else FIRST=4; LAST=8; fi
for s in $(seq $FIRST $LAST); do
  printf '\r  0%%|          | 0/10 [00:00<?, ?it/s]\r 50%%|#####     | 5/10 [00:00<00:00, 40.0it/s]'
  printf '\r100%%|##########| 10/10 [00:00<00:00, 41.0it/s]\n'
  if [ "$s" = 5 ]; then
    printf 'step=%d lo' "$s"
    sleep 3
    printf 'ss=%d.%02d acc=0.%d%d\n' "$A" "$s" "$s" "$A"
  else
    printf 'step=%d loss=%d.%02d acc=0.%d%d\n' "$s" "$A" "$s" "$s" "$A"
  fi
  printf '{"step": %d, "val_loss": %d.5, "phase": "eval"}\n' "$s" "$((A * 100 + s))"
  printf 'Saving checkpoints/epoch=%d-step=%d.pt\n' "$s" "$((s * 10))"
  printf 'eval_score=%d\n' "$((A * 100 + s))"
  sleep 1
done
echo "UserWarning: loss=nan detected, skipping batch"
if [ "$A" = 0 ]; then echo "attempt 0 waits to be requeued"; sleep 600; fi
echo "training done"
"""


def _expected(attempt_steps: dict[int, range]) -> dict[str, dict[int, float]]:
    """Return name -> step -> value after the attempts wrote their steps, later ones winning."""
    out: dict[str, dict[int, float]] = {"loss": {}, "acc": {}, "val_loss": {}, "eval_score": {}}
    for attempt, steps in sorted(attempt_steps.items()):
        for ordinal, step in enumerate(steps):
            out["loss"][step] = float(f"{attempt}.{step:02d}")
            out["acc"][step] = float(f"0.{step}{attempt}")
            out["val_loss"][step] = attempt * 100 + step + 0.5
            # No step in the line: the per-file counter, which starts again after truncation.
            out["eval_score"][ordinal] = float(attempt * 100 + step)
    return out


FIRST_ATTEMPT = _expected({0: range(1, 7)})
BOTH_ATTEMPTS = _expected({0: range(1, 7), 1: range(4, 9)})


@dataclass
class Pair:
    """One database with the tracker and ingester that feed it."""

    repository: Repository
    tracker: JobTracker
    ingester: LogIngester
    stats: IngestStats = field(default_factory=IngestStats)


@dataclass
class Outcome:
    """What the scenario saw, per database."""

    job_id: str = ""
    log_path: Path = Path()
    first_attempt: dict[str, dict[str, dict[int, float]]] = field(default_factory=dict)
    final: dict[str, dict[str, dict[int, float]]] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    split_polls: int = 0
    split_leaks: list[str] = field(default_factory=list)
    second_sync_points: dict[str, int] = field(default_factory=dict)
    rows_after_second_sync: dict[str, int] = field(default_factory=dict)
    ingest_failures: dict[str, int] = field(default_factory=dict)
    truncations_seen: dict[str, int] = field(default_factory=dict)


def _ended(stats: CycleStats, tracker: JobTracker) -> list[Run]:
    live = {run.id for run in tracker.live_runs}
    return [run for run, _ in stats.changes if run.id not in live]


def _sync(pair: Pair) -> None:
    stats = pair.tracker.cycle()
    pair.stats.add(pair.ingester.follow(pair.tracker.live_runs, _ended(stats, pair.tracker)))


def _metrics(repository: Repository, job_id: str) -> dict[str, dict[int, float]]:
    found = repository.find_run(job_id)
    if found is None:
        return {}
    with repository.atomic() as connection:
        points = load_metrics(connection, found["id"])
    out: dict[str, dict[int, float]] = {}
    for point in points:
        out.setdefault(point.name, {})[point.step] = point.value
    return out


def _rows(metrics: dict[str, dict[int, float]]) -> int:
    return sum(len(steps) for steps in metrics.values())


def _state(cluster: Any, job_id: str) -> str:
    return str(cluster.state(job_id) or "")


def _pairs(cluster: Any, work: Path, tmp: Path, make_pg: Callable[[str], str]) -> dict[str, Pair]:
    urls = {
        "sqlite": f"sqlite:///{tmp / 'logs.db'}",
        "postgresql": make_pg("hpcsync_test_log_ingest"),
    }
    observers: dict[str, ObserverKind] = {"sqlite": "auto", "postgresql": "polling"}
    pairs: dict[str, Pair] = {}
    for name, url in urls.items():
        repository = Repository.from_url(url)
        repository.ensure_schema()
        scheduler = CliScheduler(env=cluster.env, timeout=30)
        tracker = JobTracker(scheduler, repository, scheduler.cluster_name())
        ingester = LogIngester(repository, roots=[str(work)], observer=observers[name])
        pairs[name] = Pair(repository, tracker, ingester)
    return pairs


def _follow_job(cluster: Any, pairs: dict[str, Pair], result: Outcome) -> None:
    """Poll until the job has run, been requeued, run again and become final everywhere."""
    job_id, requeued, state = result.job_id, False, ""
    started = time.monotonic()
    while time.monotonic() - started < DEADLINE:
        text = result.log_path.read_text(errors="replace") if result.log_path.exists() else ""
        split_pending = text.endswith(f"step={SPLIT_AT} lo")
        for name, pair in pairs.items():
            _sync(pair)
            leaked = _metrics(pair.repository, job_id).get("loss", {}).get(SPLIT_AT)
            if split_pending and leaked is not None and not requeued:
                result.split_leaks.append(f"{name}: {leaked}")
        result.split_polls += split_pending
        state = _state(cluster, job_id)
        if not requeued and "attempt 0 waits" in text and state == "RUNNING":
            _settle(pairs)
            for name, pair in pairs.items():
                result.first_attempt[name] = _metrics(pair.repository, job_id)
            cluster.requeue(job_id)
            cluster.release(job_id)
            requeued = True
        if requeued and not any(pair.tracker.live_runs for pair in pairs.values()):
            return
        time.sleep(POLL)
    pytest.fail(f"job {job_id} not finished and final after {DEADLINE:.0f} s ({state})")


def _second_sync(cluster: Any, work: Path, pair: Pair, job_id: str) -> IngestStats:
    """Sync again as `hpcsync sync` does: a new tracker and ingester on the same database."""
    scheduler = CliScheduler(env=cluster.env, timeout=30)
    tracker = JobTracker(scheduler, pair.repository, scheduler.cluster_name())
    ingester = LogIngester(pair.repository, roots=[str(work)], observer="polling")
    try:
        stats = tracker.cycle()
        again = ingester.follow(tracker.live_runs, _ended(stats, tracker))
        stored = pair.repository.runs_for_jobs(tracker.cluster, [job_id])[0]
        again.add(ingester.finish([stored]))
    finally:
        ingester.close()
    assert again.files >= 1
    return again


@pytest.fixture(scope="module")
def outcome(
    slurm_cluster: Any,
    tmp_path_factory: pytest.TempPathFactory,
    make_postgres_database: Callable[[str], str],
) -> Iterator[Outcome]:
    cluster = slurm_cluster
    work = Path(cluster.workdir("log-ingest"))
    pairs = _pairs(cluster, work, tmp_path_factory.mktemp("log-ingest"), make_postgres_database)
    result = Outcome()
    result.job_id = job_id = cluster.sbatch(
        f"--chdir={work}",
        f"--output={work}/%x-%j.out",
        "--job-name=logingest",
        "--requeue",
        "--comment=experiment=log-ingest run=requeued",
        script=SCRIPT,
    )
    result.log_path = work / f"logingest-{job_id}.out"
    try:
        _follow_job(cluster, pairs, result)
        for name, pair in pairs.items():
            pair.ingester.close()
            result.final[name] = _metrics(pair.repository, job_id)
            run = pair.repository.find_run(job_id)
            assert run is not None
            result.restarts[name] = run["restarts"]
            result.ingest_failures[name] = pair.stats.failures
            result.truncations_seen[name] = pair.stats.restarts
        for name, pair in pairs.items():
            result.second_sync_points[name] = _second_sync(cluster, work, pair, job_id).points
            result.rows_after_second_sync[name] = _rows(_metrics(pair.repository, job_id))
        yield result
    finally:
        for pair in pairs.values():
            pair.ingester.close()
            pair.repository.dispose()
        if _state(cluster, job_id) in ("RUNNING", "PENDING"):
            cluster.scancel(job_id)


def _settle(pairs: dict[str, Pair]) -> None:
    """Poll until a cycle reads nothing new (inotify events are asynchronous)."""
    for _ in range(10):
        time.sleep(0.3)
        before = sum(pair.stats.points for pair in pairs.values())
        for pair in pairs.values():
            _sync(pair)
        if sum(pair.stats.points for pair in pairs.values()) == before:
            return


DATABASES = ["sqlite", "postgresql"]


@pytest.mark.parametrize("database", DATABASES)
def test_running_job_yields_exact_points_among_noise(outcome: Outcome, database: str) -> None:
    assert outcome.first_attempt[database] == FIRST_ATTEMPT
    assert _rows(outcome.first_attempt[database]) == 24


def test_split_line_was_held_back_until_complete(outcome: Outcome) -> None:
    assert outcome.split_polls >= 1, "no poll happened while the line was half written"
    assert outcome.split_leaks == []


@pytest.mark.parametrize("database", DATABASES)
def test_requeued_job_loses_nothing_and_doubles_nothing(outcome: Outcome, database: str) -> None:
    assert outcome.restarts[database] == 1
    assert outcome.final[database] == BOTH_ATTEMPTS
    assert _rows(outcome.final[database]) == 8 + 8 + 8 + 6
    assert outcome.ingest_failures[database] == 0
    assert outcome.truncations_seen[database] >= 1
    assert "training done" in outcome.log_path.read_text()


@pytest.mark.parametrize("database", DATABASES)
def test_second_sync_adds_nothing(outcome: Outcome, database: str) -> None:
    assert outcome.second_sync_points[database] == 0
    assert outcome.rows_after_second_sync[database] == _rows(outcome.final[database])
