"""The poll cycle against a scripted scheduler, on both databases."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from hpcsync import sync as sync_module
from hpcsync.db.repository import Repository
from hpcsync.errors import SchedulerUnavailable
from hpcsync.models import Job, JobState, RunStatus
from hpcsync.slurm.fake import FakeScheduler
from hpcsync.sync import JobTracker

T0 = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def job(job_id: str, state: JobState = JobState.PENDING, **fields: object) -> Job:
    values: dict[str, object] = {
        "job_id": job_id,
        "job_id_raw": int(job_id.split("_", 1)[0]),
        "name": "train",
        "comment": "experiment=resnet run=r1",
        "submitted_at": T0,
        "restarts": 0,
        "num_cpus": 1,
        "mem_mb": 100,
        "partition": "debug",
    }
    values.update(fields)
    return Job(state=state, **values)  # type: ignore[arg-type]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def slurm() -> FakeScheduler:
    return FakeScheduler(cluster="hpc")


@pytest.fixture
def tracker(slurm: FakeScheduler, repository: Repository, clock: Clock) -> JobTracker:
    return JobTracker(slurm, repository, "hpc", clock=clock)


def test_a_job_goes_from_pending_to_completed_with_its_events(
    slurm: FakeScheduler, tracker: JobTracker, repository: Repository
) -> None:
    slurm.add(job("5"))
    assert tracker.cycle().new == 1
    slurm.update("5", state=JobState.RUNNING, started_at=T0 + timedelta(seconds=2))
    tracker.cycle()
    slurm.update("5", state=JobState.COMPLETED, ended_at=T0 + timedelta(seconds=9), exit_code=0)
    tracker.cycle()
    row = repository.find_run("5")
    assert row is not None
    assert (row["status"], row["slurm_state"], row["exit_code"]) == ("completed", "COMPLETED", 0)
    assert (row["experiment"], row["name"], row["num_cpus"], row["mem_mb"]) == (
        "resnet",
        "r1",
        1,
        100,
    )
    assert [(e["from_state"], e["to_state"]) for e in row["events"]] == [
        (None, "PENDING"),
        ("PENDING", "RUNNING"),
        ("RUNNING", "COMPLETED"),
    ]
    assert tracker.live_runs == []


def test_each_cycle_makes_one_squeue_call_and_sacct_only_for_ended_jobs(
    slurm: FakeScheduler, tracker: JobTracker
) -> None:
    slurm.add(*(job(str(n), JobState.RUNNING, started_at=T0) for n in range(1, 51)))
    for _ in range(3):
        tracker.cycle()
    assert slurm.calls["list_jobs"] == 3 and slurm.calls["job_history"] == 0
    slurm.update("7", state=JobState.FAILED, exit_code=3, ended_at=T0)
    slurm.update("8", state=JobState.COMPLETED, exit_code=0, ended_at=T0)
    tracker.cycle()
    assert slurm.calls["list_jobs"] == 4 and slurm.calls["job_history"] == 1


def test_a_steady_cycle_writes_nothing(
    slurm: FakeScheduler, tracker: JobTracker, repository: Repository, clock: Clock
) -> None:
    slurm.add(*(job(str(n), JobState.RUNNING, started_at=T0) for n in range(1, 21)))
    tracker.cycle()
    writes: list[int] = []
    original = repository.save_runs

    def counting(changes, now):  # type: ignore[no-untyped-def]
        writes.append(len(changes))
        return original(changes, now)

    repository.save_runs = counting  # type: ignore[method-assign]
    clock.advance(30)
    stats = tracker.cycle()
    assert (stats.changed, writes) == (0, [])


def test_a_steady_cycle_applies_only_the_jobs_that_changed(
    slurm: FakeScheduler,
    tracker: JobTracker,
    repository: Repository,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slurm.add(*(job(str(n)) for n in range(1, 21)))
    tracker.cycle()
    tracker.cycle()  # the first steady cycle learns which jobs changed nothing
    observed: list[str] = []
    real_observe = sync_module.observe

    def counting(previous, job, *args):  # type: ignore[no-untyped-def]
        observed.append(job.job_id)
        return real_observe(previous, job, *args)

    monkeypatch.setattr(sync_module, "observe", counting)
    clock.advance(30)
    stats = tracker.cycle()
    assert (observed, stats.changed, stats.tracked) == ([], 0, 20)

    slurm.update("7", state=JobState.RUNNING, started_at=T0 + timedelta(seconds=40))
    clock.advance(30)
    stats = tracker.cycle()
    assert (observed, stats.changed) == (["7"], 1)
    row = repository.find_run("7")
    assert row is not None and row["slurm_state"] == "RUNNING"
    observed.clear()
    stats = tracker.cycle()  # "7" changed last cycle: applied once more, then quiet
    assert (observed, stats.changed) == (["7"], 0)
    observed.clear()
    assert (tracker.cycle().changed, observed) == (0, [])


def test_untagged_jobs_are_absent_unless_asked_for(
    slurm: FakeScheduler, repository: Repository, clock: Clock
) -> None:
    slurm.add(job("1"), job("2", comment=None, name="scratch"))
    JobTracker(slurm, repository, "hpc", clock=clock).cycle()
    assert repository.find_run("2") is None and repository.find_run("1") is not None
    JobTracker(slurm, repository, "hpc", clock=clock, track_untagged=True).cycle()
    row = repository.find_run("2")
    assert row is not None and row["experiment"] == "scratch"


def test_a_job_purged_between_two_cycles_gets_its_end_from_sacct(
    slurm: FakeScheduler, tracker: JobTracker, repository: Repository
) -> None:
    slurm.add(job("9", JobState.RUNNING, started_at=T0))
    tracker.cycle()
    slurm.update("9", state=JobState.FAILED, exit_code=3, ended_at=T0 + timedelta(minutes=1))
    slurm.purge("9")
    tracker.cycle()
    row = repository.find_run("9")
    assert row is not None
    assert (row["status"], row["slurm_state"], row["exit_code"]) == ("failed", "FAILED", 3)
    assert row["ended_at"] == T0 + timedelta(minutes=1)


def test_a_lagging_sacct_keeps_the_run_open_until_it_has_the_end(
    slurm: FakeScheduler, tracker: JobTracker, repository: Repository
) -> None:
    running = job("3", JobState.RUNNING, started_at=T0)
    slurm.add(running)
    tracker.cycle()
    slurm.controller["3"] = job("3", JobState.COMPLETED, started_at=T0, ended_at=T0)
    tracker.cycle()
    assert [run.job.job_id for run in tracker.live_runs] == ["3"]
    row = repository.find_run("3")
    assert row is not None and row["status"] == "completed" and row["exit_code"] is None
    slurm.accounting["3"] = job("3", JobState.COMPLETED, ended_at=T0, exit_code=0)
    tracker.cycle()
    row = repository.find_run("3")
    assert row is not None and row["exit_code"] == 0 and tracker.live_runs == []
    assert [e["to_state"] for e in row["events"]] == ["RUNNING", "COMPLETED"]


def test_array_tasks_are_one_run_each(
    slurm: FakeScheduler, tracker: JobTracker, repository: Repository
) -> None:
    for task in range(3):
        slurm.add(job(f"20_{task}", job_id_raw=20 + task, array_job_id=20, array_task_id=task))
    tracker.cycle()
    rows = [repository.find_run(f"20_{task}") for task in range(3)]
    assert [(r["slurm_job_id_raw"], r["array_task_id"]) for r in rows if r] == [
        (20, 0),
        (21, 1),
        (22, 2),
    ]


def test_a_requeue_is_the_same_run_with_a_restart(
    slurm: FakeScheduler, tracker: JobTracker, repository: Repository
) -> None:
    slurm.add(job("4", JobState.RUNNING, started_at=T0))
    tracker.cycle()
    slurm.update("4", state=JobState.PENDING, restarts=1, state_reason="BeginTime")
    tracker.cycle()
    slurm.update("4", state=JobState.RUNNING, started_at=T0 + timedelta(minutes=2))
    tracker.cycle()
    slurm.update("4", state=JobState.COMPLETED, exit_code=0, ended_at=T0 + timedelta(minutes=3))
    tracker.cycle()
    assert repository.count_runs() == 1
    row = repository.find_run("4")
    assert row is not None and row["restarts"] == 1 and row["status"] == "completed"
    assert [e["to_state"] for e in row["events"]] == ["RUNNING", "PENDING", "RUNNING", "COMPLETED"]
    assert "requeued" in (row["events"][1]["reason"] or "")


def test_a_reused_job_id_becomes_a_new_run(
    slurm: FakeScheduler, tracker: JobTracker, repository: Repository
) -> None:
    slurm.add(job("6", JobState.COMPLETED, exit_code=0, ended_at=T0))
    tracker.cycle()
    slurm.remove("6")
    slurm.add(job("6", submitted_at=T0 + timedelta(days=2), comment="experiment=other"))
    tracker.cycle()
    assert repository.count_runs() == 2
    row = repository.find_run("6")
    assert row is not None and row["experiment"] == "other" and row["status"] == "pending"


def test_a_restarted_tracker_resumes_without_duplicates(
    slurm: FakeScheduler, repository: Repository, clock: Clock
) -> None:
    slurm.add(job("1", JobState.RUNNING, started_at=T0), job("2", JobState.COMPLETED, exit_code=0))
    JobTracker(slurm, repository, "hpc", clock=clock).cycle()
    again = JobTracker(slurm, repository, "hpc", clock=clock)
    stats = again.cycle()
    assert stats.changed == 0 and repository.count_runs() == 2
    row = repository.find_run("1")
    assert row is not None and len(row["events"]) == 1


def test_catch_up_imports_jobs_that_ran_while_no_daemon_did(
    slurm: FakeScheduler, repository: Repository, clock: Clock
) -> None:
    first = JobTracker(slurm, repository, "hpc", clock=clock)
    first.cycle()
    clock.advance(3600)
    slurm.accounting["8"] = job(
        "8",
        JobState.COMPLETED,
        exit_code=0,
        submitted_at=T0 + timedelta(minutes=5),
        ended_at=T0 + timedelta(minutes=9),
    )
    restarted = JobTracker(slurm, repository, "hpc", clock=clock)
    restarted.load()
    restarted.cycle()
    restarted.catch_up()
    row = repository.find_run("8")
    assert row is not None and row["status"] == "completed" and row["exit_code"] == 0
    assert restarted.cycle().changed == 0


def test_a_failing_sacct_does_not_lose_the_squeue_changes(
    slurm: FakeScheduler,
    tracker: JobTracker,
    repository: Repository,
    caplog: pytest.LogCaptureFixture,
) -> None:
    slurm.add(job("2", JobState.RUNNING, started_at=T0))
    tracker.cycle()
    slurm.update("2", state=JobState.TIMEOUT, ended_at=T0)
    original = slurm.job_history

    def broken(job_ids):  # type: ignore[no-untyped-def]
        raise SchedulerUnavailable("sacct: error: slurmdbd not responding")

    slurm.job_history = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING):
        tracker.cycle()
    row = repository.find_run("2")
    assert row is not None and row["slurm_state"] == "TIMEOUT" and row["status"] == "failed"
    assert "sacct failed" in caplog.text
    slurm.job_history = original  # type: ignore[method-assign]
    tracker.cycle()
    assert tracker.live_runs == []


def test_an_unreachable_slurm_raises_one_error_type(
    slurm: FakeScheduler, tracker: JobTracker
) -> None:
    slurm.fail("squeue: error: Unable to contact slurm controller")
    with pytest.raises(SchedulerUnavailable, match="Unable to contact"):
        tracker.cycle()


def test_status_values_are_the_trackers(
    slurm: FakeScheduler, tracker: JobTracker, repository: Repository
) -> None:
    slurm.add(job("1", JobState.CANCELLED, exit_code=0, ended_at=T0))
    tracker.cycle()
    row = repository.find_run("1")
    assert row is not None and row["status"] == RunStatus.CANCELLED.value


def test_a_stand_in_accounting_record_is_ignored_until_the_real_one_arrives(
    slurm: FakeScheduler, tracker: JobTracker, repository: Repository
) -> None:
    slurm.add(job("15", JobState.RUNNING, started_at=T0, partition="debug"))
    tracker.cycle()
    slurm.purge("15")
    slurm.accounting["15"] = job(
        "15", JobState.COMPLETED, name="allocation", exit_code=0, partition=None, num_cpus=0
    )
    tracker.cycle()
    assert [run.job.job_id for run in tracker.live_runs] == ["15"]
    slurm.accounting["15"] = job(
        "15", JobState.FAILED, exit_code=4, partition="debug", num_cpus=1, ended_at=T0
    )
    tracker.cycle()
    row = repository.find_run("15")
    assert row is not None and (row["job_name"], row["exit_code"]) == ("train", 4)
