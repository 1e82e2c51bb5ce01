"""The pure job-to-run rules: tag grammar, status mapping, merging and events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from hpcsync.models import Job, JobState, RunStatus
from hpcsync.tracking import (
    is_placeholder,
    merge_job,
    observe,
    parse_comment,
    same_job,
    status_for,
    tag_for,
)

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def job(state: JobState = JobState.PENDING, **fields: object) -> Job:
    values: dict[str, object] = {
        "job_id": "41",
        "job_id_raw": 41,
        "name": "train",
        "comment": "experiment=resnet",
        "submitted_at": T0,
        "restarts": 0,
    }
    values.update(fields)
    return Job(state=state, **values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("comment", "experiment", "run_name", "tags"),
    [
        ("experiment=resnet", "resnet", None, {}),
        ("experiment=resnet run=lr-0.1 tags=a,b", "resnet", "lr-0.1", {"a": "", "b": ""}),
        ("experiment=resnet;run=r1;owner=ana", "resnet", "r1", {"owner": "ana"}),
        ('experiment="big sweep" lr=0.1', "big sweep", None, {"lr": "0.1"}),
        ("  run=x ; experiment=e  ", "e", "x", {}),
        ("experiment=a|b tags=x", "a|b", None, {"x": ""}),
    ],
)
def test_parse_comment_reads_the_tag_grammar(
    comment: str, experiment: str, run_name: str | None, tags: dict[str, str]
) -> None:
    tag = parse_comment(comment)
    assert tag is not None
    assert (tag.experiment, tag.run_name, tag.tags) == (experiment, run_name, tags)


@pytest.mark.parametrize(
    "comment", [None, "", "(null)", "just words", "experiment=", "run=x tags=a"]
)
def test_parse_comment_without_experiment_is_untagged(comment: str | None) -> None:
    assert parse_comment(comment) is None


def test_untagged_jobs_are_tracked_under_their_name_only_when_asked() -> None:
    untagged = job(comment=None, name="bert")
    assert tag_for(untagged, track_untagged=False) is None
    tag = tag_for(untagged, track_untagged=True)
    assert tag is not None and tag.experiment == "bert"


@pytest.mark.parametrize(
    ("state", "status"),
    [
        (JobState.PENDING, RunStatus.PENDING),
        (JobState.RUNNING, RunStatus.RUNNING),
        (JobState.COMPLETING, RunStatus.RUNNING),
        (JobState.COMPLETED, RunStatus.COMPLETED),
        (JobState.FAILED, RunStatus.FAILED),
        (JobState.TIMEOUT, RunStatus.FAILED),
        (JobState.OUT_OF_MEMORY, RunStatus.FAILED),
        (JobState.NODE_FAIL, RunStatus.FAILED),
        (JobState.CANCELLED, RunStatus.CANCELLED),
        (JobState.PREEMPTED, RunStatus.CANCELLED),
    ],
)
def test_status_for_maps_slurm_states(state: JobState, status: RunStatus) -> None:
    assert status_for(state) is status


def test_every_state_has_a_status() -> None:
    for state in JobState:
        assert isinstance(status_for(state), RunStatus)


def test_job_state_parse_reads_slurm_spellings() -> None:
    assert JobState.parse("CANCELLED by 0") is JobState.CANCELLED
    assert JobState.parse("RUNNING+") is JobState.RUNNING
    assert JobState.parse("SOMETHING_NEW") is JobState.UNKNOWN


def test_a_new_job_becomes_a_run_with_one_event() -> None:
    tag = tag_for(job(), track_untagged=False)
    run, events = observe(None, job(), tag, "hpc", T0)
    assert (run.experiment, run.status, run.cluster) == ("resnet", RunStatus.PENDING, "hpc")
    assert [(e.from_state, e.to_state) for e in events] == [(None, "PENDING")]


def test_pending_estimates_are_not_recorded_as_times() -> None:
    estimated = job(started_at=T0 + timedelta(hours=1), ended_at=T0 + timedelta(hours=2))
    run, _ = observe(None, estimated, tag_for(estimated, False), "hpc", T0)
    assert run.job.started_at is None and run.job.ended_at is None


def test_a_state_change_writes_an_event_and_an_unchanged_job_writes_nothing() -> None:
    first, _ = observe(None, job(), tag_for(job(), False), "hpc", T0)
    running = job(JobState.RUNNING, started_at=T0 + timedelta(seconds=5), node_list="n1")
    second, events = observe(first, running, None, "hpc", T0)
    assert [(e.from_state, e.to_state, e.at) for e in events] == [
        ("PENDING", "RUNNING", T0 + timedelta(seconds=5))
    ]
    third, events = observe(second, running, None, "hpc", T0 + timedelta(seconds=30))
    assert events == [] and third == second


def test_sacct_fills_the_exit_code_and_keeps_what_it_does_not_report() -> None:
    squeue = job(JobState.FAILED, stdout_path="/logs/slurm-41.out", ended_at=T0)
    sacct = job(JobState.FAILED, exit_code=3, exit_signal=0, stdout_path=None, restarts=None)
    merged = merge_job(squeue, sacct)
    assert (merged.exit_code, merged.stdout_path, merged.restarts) == (3, "/logs/slurm-41.out", 0)


def test_a_lagging_accounting_record_never_undoes_an_end() -> None:
    ended, _ = observe(None, job(JobState.COMPLETED, ended_at=T0), tag_for(job(), False), "hpc", T0)
    stale, events = observe(ended, job(JobState.RUNNING, started_at=T0), None, "hpc", T0)
    assert stale.job.state is JobState.COMPLETED and events == []


def test_a_requeue_keeps_the_run_counts_a_restart_and_clears_the_end() -> None:
    running, _ = observe(
        None, job(JobState.RUNNING, started_at=T0), tag_for(job(), False), "hpc", T0
    )
    requeued = job(JobState.PENDING, restarts=1, submitted_at=T0 + timedelta(minutes=1))
    assert same_job(running, requeued)
    run, events = observe(running, requeued, None, "hpc", T0)
    assert run.restarts == 1 and run.status is RunStatus.PENDING and run.job.started_at is None
    assert [(e.from_state, e.to_state) for e in events] == [("RUNNING", "PENDING")]
    assert events[0].reason is not None and "requeued" in events[0].reason


def test_a_reused_job_id_with_a_new_submit_time_is_another_job() -> None:
    old, _ = observe(None, job(JobState.COMPLETED), tag_for(job(), False), "hpc", T0)
    assert not same_job(old, job(submitted_at=T0 + timedelta(days=3)))
    assert same_job(old, job())


def test_slurmdbds_stand_in_record_is_recognised() -> None:
    from pathlib import Path

    from hpcsync.slurm.parsers import parse_sacct

    text = (Path(__file__).parents[1] / "fixtures" / "slurm" / "sacct_placeholder.txt").read_text()
    (placeholder,) = parse_sacct(text, UTC)
    assert placeholder.name == "allocation" and is_placeholder(placeholder)
    ended = (
        Path(__file__).parents[1] / "fixtures" / "slurm" / "sacct_placeholder_ended.txt"
    ).read_text()
    (stand_in,) = parse_sacct(ended, UTC)
    assert (stand_in.state, stand_in.num_cpus, stand_in.user_name) == (
        JobState.COMPLETED,
        1,
        "root",
    )
    assert is_placeholder(stand_in)
    assert not is_placeholder(job(JobState.FAILED, partition="debug", num_cpus=2, exit_code=4))


def test_event_times_come_from_slurms_clock_so_they_sort_in_order() -> None:
    pending = job(JobState.PENDING, submitted_at=T0)
    first, events = observe(
        None, pending, tag_for(pending, False), "hpc", T0 + timedelta(seconds=0.7)
    )
    assert events[0].at == T0
    running = job(JobState.RUNNING, submitted_at=T0, started_at=T0)
    _, later = observe(first, running, None, "hpc", T0 + timedelta(seconds=1.5))
    assert later[0].at == T0 and (events[0].at, 0) <= (later[0].at, 1)
