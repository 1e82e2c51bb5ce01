"""Issue #2's acceptance on the real Slurm: tagged jobs become correct runs, on SQLite and PostgreSQL.

One scenario runs once per module: the jobs are submitted together and two trackers (one per
database) poll the real cluster through the CLI backend until every job has ended. A second pair
of trackers sees one job only while it runs and again after Slurm has purged it, so its end can
only come from sacct.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hpcsync.db.repository import Repository
from hpcsync.slurm.cli import CliScheduler
from hpcsync.sync import JobTracker

DEADLINE = 420.0
POLL = 2.0


@dataclass
class Scenario:
    """Job ids by role, and the repositories the trackers wrote."""

    jobs: dict[str, str] = field(default_factory=dict)
    repositories: dict[str, Repository] = field(default_factory=dict)
    purge_repositories: dict[str, Repository] = field(default_factory=dict)
    squeue_calls_per_cycle: list[int] = field(default_factory=list)
    sacct_calls_per_cycle: list[int] = field(default_factory=list)


def _squeue_ids(cluster: Any) -> set[str]:
    out = cluster.run("squeue", "-h", "-a", "-r", "-t", "all", "-O", "JobArrayID:|").stdout
    return {line.strip().rstrip("|") for line in out.splitlines() if line.strip()}


def _state(cluster: Any, job_id: str) -> str:
    out = cluster.run("squeue", "-h", "-t", "all", "-j", job_id, "-O", "State:|").stdout.strip()
    return out.rstrip("|")


def _repositories(tmp: Path, make_pg: Callable[[str], str], name: str) -> dict[str, Repository]:
    repos = {
        "sqlite": Repository.from_url(f"sqlite:///{tmp / (name + '.db')}"),
        "postgresql": Repository.from_url(make_pg(f"hpcsync_test_{name}")),
    }
    for repo in repos.values():
        repo.ensure_schema()
    return repos


def _submit_all(cluster: Any, work: Path) -> dict[str, str]:
    """Submit the scenario's jobs; return their ids by role."""
    jobs: dict[str, str] = {}

    def submit(role: str, *args: str, script: str) -> None:
        jobs[role] = cluster.sbatch(
            f"--chdir={work}", f"--output={work}/%x-%j.out", *args, script=script
        )

    tag = "--comment=experiment=acceptance run={}"
    submit("ok", "--job-name=ok", tag.format("ok"), script="sleep 8; echo done")
    submit("fail", "--job-name=fail", tag.format("fail"), script="sleep 1; exit 3")
    submit("cancel", "--job-name=cancel", tag.format("cancel"), script="sleep 300")
    submit(
        "array", "--job-name=sweep", "--array=0-2", "--comment=experiment=sweep", script="sleep 2"
    )
    submit(
        "gpu",
        "--job-name=gpu",
        "--gres=gpu:1",
        "--mem=200M",
        "-c",
        "2",
        "--comment=experiment=acceptance run=gpu tags=a100,big",
        script='echo "gpus=$CUDA_VISIBLE_DEVICES"; sleep 2',
    )
    submit("timeout", "--job-name=timeout", "--time=1", tag.format("timeout"), script="sleep 300")
    submit("requeue", "--job-name=requeue", "--requeue", tag.format("requeue"), script="sleep 15")
    submit("untagged", "--job-name=untagged", script="sleep 1")
    submit("purged", "--job-name=purged", tag.format("purged"), script="sleep 12; exit 7")
    return jobs


@pytest.fixture(scope="module")
def scenario(
    slurm_cluster: Any,
    tmp_path_factory: pytest.TempPathFactory,
    make_postgres_database: Callable[[str], str],
) -> Iterator[Scenario]:
    cluster = slurm_cluster
    work = Path(cluster.workdir("jobs-to-runs"))
    tmp = tmp_path_factory.mktemp("jobs-to-runs")
    result = Scenario(
        repositories=_repositories(tmp, make_postgres_database, "main"),
        purge_repositories=_repositories(tmp, make_postgres_database, "purge"),
    )
    schedulers = [CliScheduler(env=cluster.env, timeout=30) for _ in result.repositories]
    cluster_name = schedulers[0].cluster_name()
    trackers = [
        JobTracker(scheduler, repo, cluster_name)
        for scheduler, repo in zip(schedulers, result.repositories.values(), strict=True)
    ]
    purge_trackers = [
        JobTracker(CliScheduler(env=cluster.env, timeout=30), repo, cluster_name)
        for repo in result.purge_repositories.values()
    ]

    result.jobs = _submit_all(cluster, work)

    cancelled = requeued = purge_seen_running = purge_done = False
    started = time.monotonic()
    try:
        while time.monotonic() - started < DEADLINE:
            for tracker, scheduler in zip(trackers, schedulers, strict=True):
                before = dict(scheduler.calls)
                tracker.cycle()
                for program, counts in (
                    ("squeue", result.squeue_calls_per_cycle),
                    ("sacct", result.sacct_calls_per_cycle),
                ):
                    counts.append(scheduler.calls[program] - before.get(program, 0))
            # Cancel and requeue only once every tracker has seen the job run.
            if not cancelled and _seen_running(trackers, result.jobs["cancel"]):
                cluster.scancel(result.jobs["cancel"])
                cancelled = True
            if not requeued and _seen_running(trackers, result.jobs["requeue"]):
                cluster.requeue(result.jobs["requeue"])
                for tracker in trackers:
                    tracker.cycle()  # each sees the held, requeued job before it is released
                cluster.release(result.jobs["requeue"])
                requeued = True
            purge_state = _state(cluster, result.jobs["purged"])
            if not purge_seen_running and purge_state == "RUNNING":
                for tracker in purge_trackers:
                    tracker.cycle()
                # The job runs 12 s, so each purge tracker saw it running.
                assert all(
                    _seen_running([tracker], result.jobs["purged"]) for tracker in purge_trackers
                )
                purge_seen_running = True
            elif purge_seen_running and not purge_done and purge_state == "":
                for tracker in purge_trackers:
                    tracker.cycle()
                purge_done = True
            live = [run for tracker in trackers for run in tracker.live_runs]
            if cancelled and requeued and purge_done and not live and _all_seen(result):
                break
            time.sleep(POLL)
        else:
            states = {role: _state(cluster, job_id) for role, job_id in result.jobs.items()}
            pytest.fail(f"scenario did not finish within {DEADLINE:.0f} s: {states}")
        yield result
    finally:
        for role in ("cancel", "timeout", "requeue"):
            if role in result.jobs:
                subprocess.run(["scancel", result.jobs[role]], env=cluster.env, check=False)
        for repo in [*result.repositories.values(), *result.purge_repositories.values()]:
            repo.dispose()


def _seen_running(trackers: list[JobTracker], job_id: str) -> bool:
    states = [
        {run.job.job_id: run.job.state.value for run in tracker.live_runs}.get(job_id)
        for tracker in trackers
    ]
    return all(state == "RUNNING" for state in states)


def _all_seen(result: Scenario) -> bool:
    repo = result.repositories["sqlite"]
    roles = [role for role in result.jobs if role not in ("untagged", "purged", "array")]
    return all(repo.find_run(result.jobs[role]) is not None for role in roles)


@pytest.fixture(params=["sqlite", "postgresql"])
def runs(request: pytest.FixtureRequest, scenario: Scenario) -> Callable[[str], dict[str, Any]]:
    repo = scenario.repositories[request.param]

    def find(role_or_id: str) -> dict[str, Any]:
        job_id = scenario.jobs.get(role_or_id, role_or_id)
        row = repo.find_run(job_id)
        assert row is not None, f"no run for {role_or_id} ({job_id})"
        return row

    return find


def _events(row: dict[str, Any]) -> list[str]:
    return [event["to_state"] for event in row["events"]]


def test_a_job_that_exits_0_is_completed(runs: Callable[[str], dict[str, Any]]) -> None:
    row = runs("ok")
    assert (row["status"], row["slurm_state"], row["exit_code"]) == ("completed", "COMPLETED", 0)
    assert (row["experiment"], row["name"], row["num_cpus"], row["num_nodes"]) == (
        "acceptance",
        "ok",
        1,
        1,
    )
    assert row["mem_mb"] == 100 and row["num_gpus"] in (0, None)
    assert row["started_at"] <= row["ended_at"] and row["submitted_at"] <= row["started_at"]
    assert row["stdout_path"].endswith(f"/ok-{row['slurm_job_id']}.out")
    assert _events(row)[-1] == "COMPLETED" and "RUNNING" in _events(row)


def test_a_job_that_exits_3_is_failed_with_exit_code_3(
    runs: Callable[[str], dict[str, Any]],
) -> None:
    row = runs("fail")
    assert (row["status"], row["slurm_state"], row["exit_code"]) == ("failed", "FAILED", 3)
    assert row["events"][-1]["to_state"] == "FAILED"


def test_a_cancelled_job_is_cancelled(runs: Callable[[str], dict[str, Any]]) -> None:
    row = runs("cancel")
    assert (row["status"], row["slurm_state"]) == ("cancelled", "CANCELLED")
    assert _events(row)[-2:] == ["RUNNING", "CANCELLED"]


def test_an_array_of_3_is_three_runs(
    runs: Callable[[str], dict[str, Any]], scenario: Scenario
) -> None:
    array_id = scenario.jobs["array"]
    rows = [runs(f"{array_id}_{task}") for task in range(3)]
    assert [row["array_task_id"] for row in rows] == [0, 1, 2]
    assert {row["array_job_id"] for row in rows} == {int(array_id)}
    assert len({row["slurm_job_id_raw"] for row in rows}) == 3
    assert all(row["status"] == "completed" and row["experiment"] == "sweep" for row in rows)


def test_a_gpu_job_records_its_allocation(runs: Callable[[str], dict[str, Any]]) -> None:
    row = runs("gpu")
    assert (row["num_gpus"], row["gpu_type"], row["num_cpus"], row["mem_mb"]) == (1, "a100", 2, 200)
    assert row["node_list"] == "localhost" and row["partition"] == "debug"
    assert row["tags"] == {"a100": "", "big": ""}
    assert row["status"] == "completed"


def test_a_job_over_its_time_limit_is_timeout(runs: Callable[[str], dict[str, Any]]) -> None:
    row = runs("timeout")
    assert (row["status"], row["slurm_state"]) == ("failed", "TIMEOUT")
    assert row["events"][-1]["reason"] in (None, "TimeLimit")


def test_a_requeued_job_is_one_run_with_one_restart(
    runs: Callable[[str], dict[str, Any]], scenario: Scenario
) -> None:
    row = runs("requeue")
    assert row["restarts"] == 1 and row["status"] == "completed" and row["exit_code"] == 0
    assert _events(row)[-3:] == ["PENDING", "RUNNING", "COMPLETED"]
    assert any("requeued" in (event["reason"] or "") for event in row["events"])
    for repo in scenario.repositories.values():
        found = repo.runs_for_jobs(repo_cluster(repo, scenario), [scenario.jobs["requeue"]])
        assert len(found) == 1


def repo_cluster(repo: Repository, scenario: Scenario) -> str:
    row = repo.find_run(scenario.jobs["ok"])
    assert row is not None
    return str(row["cluster"])


def test_untagged_jobs_are_absent(scenario: Scenario) -> None:
    for repo in scenario.repositories.values():
        assert repo.find_run(scenario.jobs["untagged"]) is None


def test_a_job_purged_between_two_cycles_gets_its_end_from_sacct(scenario: Scenario) -> None:
    for repo in scenario.purge_repositories.values():
        row = repo.find_run(scenario.jobs["purged"])
        assert row is not None
        assert (row["status"], row["slurm_state"], row["exit_code"]) == ("failed", "FAILED", 7)
        assert row["ended_at"] is not None
        assert _events(row) == ["RUNNING", "FAILED"]


def test_each_cycle_made_one_squeue_call_and_at_most_one_sacct_call(scenario: Scenario) -> None:
    assert set(scenario.squeue_calls_per_cycle) == {1}
    assert max(scenario.sacct_calls_per_cycle) == 1
