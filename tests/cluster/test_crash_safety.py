"""Issue #6 item 1 on the real Slurm: `kill -9` at random moments loses and duplicates nothing.

One job writes 300,000 metric lines among noise to its stdout while smaller jobs run, fail and
end. Two `python -m hpcsync run` daemons (SQLite and PostgreSQL) follow them; each is killed
with SIGKILL at least KILLS times, at a random moment 0.05-1.5 s after it started, and started
again. A last daemon then runs to the end. Every point must be there exactly once with its
value, and every run's events must form one chain with no state change recorded twice.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

KILLS = 20
POINTS = 300_000
CHUNK = 10_000
DEADLINE = 240.0
DELAYS = (0.05, 1.5)

BIG_SCRIPT = rf"""#!/bin/bash
python3 - <<'EOF'
import sys, time
out = sys.stdout
for chunk in range({POINTS // CHUNK}):
    for s in range(chunk * {CHUNK}, (chunk + 1) * {CHUNK}):
        if s % 50 == 0:
            out.write("INFO loading the next shard of the training data\n")
        out.write("step=%d loss=%.3f\n" % (s, (s % 1000) / 1000))
    out.flush()
    time.sleep(1.5)
print("training done")
EOF
"""


@dataclass
class Outcome:
    """What one backend's kill loop did and what its database holds afterwards."""

    url: str
    kills: int = 0
    jobs: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)


def _config(directory: Path, url: str, work: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.toml"
    path.write_text(
        f'state_dir = "{directory}"\n[database]\nurl = "{url}"\n'
        '[slurm]\nbackend = "cli"\npoll_interval = 1\ncatchup_days = 0\nusage_interval = 0\n'
        f'[logs]\nroots = [{json.dumps(str(work))}]\nobserver = "polling"\npoll_interval = 0.5\n'
    )
    return path


def _start(cluster: Any, config: Path, log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "hpcsync", "-c", str(config), "run"],
            env=cluster.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


def _started_count(log_path: Path) -> int:
    if not log_path.exists():
        return 0
    return log_path.read_text(errors="replace").count("hpcsync starting")


def _kill_loop(
    cluster: Any, config: Path, log_path: Path, outcome: Outcome, done: Callable[[], bool]
) -> None:
    rng = random.Random()
    deadline = time.monotonic() + DEADLINE
    while (outcome.kills < KILLS or not done()) and time.monotonic() < deadline:
        before = _started_count(log_path)
        process = _start(cluster, config, log_path)
        # Kill after the interpreter is up, so the moment falls in start-up, a poll or a read.
        limit = time.monotonic() + 60
        while _started_count(log_path) == before and time.monotonic() < limit:
            if process.poll() is not None:
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(*DELAYS))
        process.kill()
        process.wait(timeout=30)
        outcome.kills += 1


def _query(url: str, sql: str) -> list[Any]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(text(sql)))
    finally:
        engine.dispose()


def _mine(job_ids: list[str]) -> str:
    """Return the SQL condition on `runs r` for these jobs: other tests' jobs share the cluster."""
    return "r.slurm_job_id IN ({})".format(", ".join(f"'{job}'" for job in job_ids))


def _settled(url: str, job_ids: list[str]) -> bool:
    try:
        rows = _query(url, f"SELECT slurm_job_id, final FROM runs r WHERE {_mine(job_ids)}")
        points = _query(
            url,
            f"SELECT count(*) FROM metrics m JOIN runs r ON r.id = m.run_id WHERE {_mine(job_ids)}",
        )[0][0]
    except Exception:
        return False
    final = {job for job, is_final in rows if is_final}
    return set(job_ids) <= final and points >= POINTS


@pytest.fixture(scope="module")
def crashes(
    slurm_cluster: Any,
    tmp_path_factory: pytest.TempPathFactory,
    make_postgres_database: Callable[[str], str],
) -> Iterator[dict[str, Outcome]]:
    cluster = slurm_cluster
    work = Path(cluster.workdir("crash"))
    tmp = tmp_path_factory.mktemp("crash")
    outcomes = {
        "sqlite": Outcome(f"sqlite:///{tmp / 'crash.db'}"),
        "postgresql": Outcome(make_postgres_database("hpcsync_test_crash")),
    }
    jobs = [
        cluster.sbatch(
            f"--output={work}/big-%j.out", "--comment=experiment=crash run=big", script=BIG_SCRIPT
        )
    ]
    for number in range(6):
        body = f"sleep {3 + 6 * number}\n" + ("exit 3\n" if number == 2 else "")
        jobs.append(
            cluster.sbatch(
                f"--output={work}/small-%j.out",
                f"--comment=experiment=crash run=small{number}",
                script=body,
            )
        )
    for outcome in outcomes.values():
        outcome.jobs = jobs
    all_ended = threading.Event()
    threads = []
    for name, outcome in outcomes.items():
        config = _config(tmp / name, outcome.url, work)
        log_path = tmp / f"{name}.log"
        thread = threading.Thread(
            target=_kill_loop, args=(cluster, config, log_path, outcome, all_ended.is_set)
        )
        thread.start()
        threads.append(thread)
    try:
        for job_id in jobs:
            cluster.wait_state(job_id, ("COMPLETED", "FAILED"), timeout=DEADLINE)
        all_ended.set()
        for thread in threads:
            thread.join(timeout=DEADLINE)
        for name, outcome in outcomes.items():
            # One last daemon runs undisturbed until every run is final and every point is in.
            log_path = tmp / f"{name}.log"
            before = _started_count(log_path)
            process = _start(cluster, tmp / name / "config.toml", log_path)
            deadline = time.monotonic() + DEADLINE
            # SIGTERM is a clean stop only once the daemon has set its handlers up.
            while _started_count(log_path) == before and time.monotonic() < deadline:
                time.sleep(0.2)
            while not _settled(outcome.url, jobs) and time.monotonic() < deadline:
                time.sleep(0.5)
            process.terminate()
            assert process.wait(timeout=60) == 0
            outcome.log = log_path.read_text(errors="replace").splitlines()
        yield outcomes
    finally:
        all_ended.set()
        for job_id in jobs:
            if cluster.state(job_id) in ("RUNNING", "PENDING"):
                cluster.scancel(job_id)


DATABASES = ["sqlite", "postgresql"]


@pytest.mark.parametrize("database", DATABASES)
def test_every_point_is_there_exactly_once_after_kill_9(
    crashes: dict[str, Outcome], database: str
) -> None:
    outcome = crashes[database]
    rows = _query(
        outcome.url,
        "SELECT m.step, m.value FROM metrics m JOIN runs r ON r.id = m.run_id"
        f" WHERE r.slurm_job_id = '{outcome.jobs[0]}' AND m.name = 'loss'",
    )
    mine = (
        f"SELECT count(*) FROM metrics m JOIN runs r ON r.id = m.run_id WHERE {_mine(outcome.jobs)}"
    )
    others = _query(outcome.url, mine)[0][0] - len(rows)
    steps = [step for step, _ in rows]
    lost = POINTS - len(set(steps) & set(range(POINTS)))
    duplicated = len(steps) - len(set(steps))
    wrong = sum(1 for step, value in rows if abs(value - (step % 1000) / 1000) > 1e-9)
    print(
        f"\n{database}: {outcome.kills} kills survived, {POINTS} points written, "
        f"{lost} lost, {duplicated} duplicated, {wrong} wrong values, {others} others"
    )
    assert outcome.kills >= KILLS
    assert (lost, duplicated, wrong, others) == (0, 0, 0, 0)
    assert len(rows) == POINTS


@pytest.mark.parametrize("database", DATABASES)
def test_every_state_change_has_exactly_one_event_after_kill_9(
    crashes: dict[str, Outcome], database: str
) -> None:
    url = crashes[database].url
    twice = _query(
        url,
        "SELECT run_id, to_state, at, count(*) FROM run_events"
        " GROUP BY run_id, to_state, at HAVING count(*) > 1",  # every run, others' too
    )
    assert twice == []
    events = _query(url, "SELECT run_id, from_state, to_state FROM run_events ORDER BY at, id")
    chains: dict[int, list[tuple[str | None, str]]] = {}
    for run_id, before, after in events:
        chains.setdefault(run_id, []).append((before, after))
    jobs = ", ".join(f"'{job}'" for job in crashes[database].jobs)
    runs = _query(
        url, f"SELECT r.id, r.slurm_state, r.status FROM runs r WHERE r.slurm_job_id IN ({jobs})"
    )
    assert len(runs) == 7
    for run_id, slurm_state, status in runs:
        chain = chains[run_id]
        # Each event starts where the one before ended: no change recorded twice, none skipped.
        for (_, previous), (before, after) in pairwise(chain):
            assert before == previous and after != previous, (run_id, chain)
        assert chain[-1][1] == slurm_state, (run_id, chain, slurm_state)
        assert status in ("completed", "failed"), (run_id, status)
