"""The pure squeue/sacct/scontrol parsers: edge cases on small hand-written lines."""

from __future__ import annotations

import json
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from hpcsync.errors import SchedulerUnavailable
from hpcsync.models import Job, JobState
from hpcsync.slurm import formats
from hpcsync.slurm.parsers import (
    expand_task_ids,
    parse_cluster_name,
    parse_duration,
    parse_gpus,
    parse_sacct,
    parse_size_mb,
    parse_squeue,
    parse_squeue_reusing,
    parse_time,
    parse_version,
)

BERLIN = ZoneInfo("Europe/Berlin")

SQUEUE_DEFAULTS = {
    "JobArrayID": "12",
    "JobID": "12",
    "ArrayJobID": "12",
    "ArrayTaskID": "N/A",
    "Name": "train",
    "State": "RUNNING",
    "Reason": "None",
    "UserName": "alice",
    "Account": "ml",
    "Partition": "debug",
    "NodeList": "localhost",
    "NumNodes": "1",
    "NumCPUs": "2",
    "MinMemory": "100M",
    "tres-alloc": "cpu=2,mem=200M,node=1,billing=2",
    "tres-per-node": "N/A",
    "SubmitTime": "2026-11-22T19:01:02",
    "StartTime": "2026-11-22T19:01:03",
    "EndTime": "2027-11-22T19:01:03",
    "WorkDir": "/w",
    "STDOUT": "/w/slurm-12.out",
    "STDERR": "/w/slurm-12.out",
    "RestartCnt": "0",
    "Comment": "(null)",
}

SACCT_DEFAULTS = {
    "JobID": "12",
    "JobIDRaw": "12",
    "JobName": "train",
    "State": "COMPLETED",
    "ExitCode": "0:0",
    "User": "alice",
    "Account": "ml",
    "Partition": "debug",
    "NodeList": "localhost",
    "NNodes": "1",
    "NCPUS": "2",
    "ReqMem": "200M",
    "AllocTRES": "billing=2,cpu=2,mem=200M,node=1",
    "Submit": "2026-11-22T19:01:02",
    "Start": "2026-11-22T19:01:03",
    "End": "2026-11-22T19:02:03",
    "ElapsedRaw": "60",
    "TotalCPU": "00:01.500",
    "MaxRSS": "",
    "WorkDir": "/w",
    "Comment": "experiment=x",
}


def squeue_line(**fields: str) -> str:
    """Return one squeue -O line, every field followed by `|`."""
    values = {**SQUEUE_DEFAULTS, **{k.replace("_", "-"): v for k, v in fields.items()}}
    return "".join(f"{values[name]}|" for name in formats.SQUEUE_FIELDS)


def sacct_line(**fields: str) -> str:
    """Return one sacct --parsable2 line."""
    values = {**SACCT_DEFAULTS, **fields}
    return "|".join(values[name] for name in formats.SACCT_FIELDS)


# --- value parsers ---------------------------------------------------------------------------


def test_times_are_local_without_zone_and_become_utc() -> None:
    summer = parse_time("2026-07-01T12:00:00", BERLIN)
    assert summer == datetime(2026, 7, 1, 10, 0, tzinfo=UTC)
    assert parse_time("2026-11-22T19:01:02", UTC) == datetime(2026, 11, 22, 19, 1, 2, tzinfo=UTC)
    for unset in ("N/A", "None", "Unknown", "NONE", "", "  "):
        assert parse_time(unset, UTC) is None


@pytest.mark.parametrize(
    ("text", "mb"),
    [("100M", 100), ("2G", 2048), ("1.50G", 1536), ("512K", 0.5), ("1T", 1048576),
     ("100Mc", 100), ("4000Mn", 4000), ("300", 300)],
)  # fmt: skip
def test_sizes(text: str, mb: float) -> None:
    assert parse_size_mb(text) == mb


def test_size_default_unit_for_maxrss() -> None:
    assert parse_size_mb("2048", default_unit="K") == 2.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("00:00.004", 0.004), ("01:02", 62), ("01:02:03", 3723), ("1-02:03:04", 93784),
     ("12.5", 12.5), ("", None)],
)  # fmt: skip
def test_durations(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "gpus"),
    [
        ("cpu=1,mem=100M,node=1,billing=1,gres/gpu=2,gres/gpu:a100=2", (2, "a100")),
        ("cpu=1,gres/gpu=1", (1, None)),
        ("gres/gpu:a100=1,gres/gpu:v100=2", (3, "a100,v100")),
        ("gres:gpu:a100:1", (1, "a100")),
        ("gres:gpu:1", (1, None)),
        ("gres/gpu:1", (1, None)),
        ("gres:gpu:a100:2,gres:mps:100", (2, "a100")),
        ("cpu=1,mem=100M", (None, None)),
        ("N/A", (None, None)),
    ],
)
def test_gpus(text: str, gpus: tuple[int | None, str | None]) -> None:
    assert parse_gpus(text) == gpus


@pytest.mark.parametrize(
    ("text", "tasks"),
    [("0-2", [0, 1, 2]), ("[1-2]", [1, 2]), ("1,5-9:2", [1, 5, 7, 9]), ("[0-3%2]", [0, 1, 2, 3]),
     ("7", [7])],
)  # fmt: skip
def test_array_ranges(text: str, tasks: list[int]) -> None:
    assert expand_task_ids(text) == tasks


def test_version_and_cluster_name() -> None:
    config = "Configuration data as of 2026-11-22T19:11:00\nClusterName             = hpctest\n"
    config += "SLURM_VERSION           = 22.05.8\n"
    assert parse_version(config) == "22.05.8"
    assert parse_version("slurm 22.05.8\n") == "22.05.8"
    assert parse_version("slurm-wlm 22.05.8\n") == "22.05.8"
    assert parse_cluster_name(config) == "hpctest"
    with pytest.raises(SchedulerUnavailable):
        parse_cluster_name("Configuration data as of now\n")
    with pytest.raises(SchedulerUnavailable):
        parse_version("slurm_load_ctl_conf error\n")


# --- squeue edge cases -----------------------------------------------------------------------


def test_squeue_comment_keeps_pipes() -> None:
    line = squeue_line(Comment="experiment=a|b run=x|")
    (job,) = parse_squeue(line + "\n", UTC)
    assert job.comment == "experiment=a|b run=x|"


def test_squeue_running_job_fields() -> None:
    (job,) = parse_squeue(squeue_line(), UTC)
    assert job.job_id == "12"
    assert job.job_id_raw == 12
    assert job.state is JobState.RUNNING
    assert job.state_reason is None
    assert job.comment is None
    assert job.mem_mb == 200
    assert job.num_cpus == 2
    assert job.exit_code is None
    assert job.started_at == datetime(2026, 11, 22, 19, 1, 3, tzinfo=UTC)
    assert job.ended_at is None, "a running job's EndTime is only the time limit"
    assert job.stdout_path == "/w/slurm-12.out"


def test_squeue_pending_job_memory_and_gpus_from_request() -> None:
    line = squeue_line(
        State="PENDING",
        Reason="Resources",
        NodeList="",
        tres_alloc="",
        tres_per_node="gres:gpu:a100:1",
        NumNodes="2",
        MinMemory="1G",
        StartTime="2026-11-22T20:00:00",
        EndTime="N/A",
    )
    (job,) = parse_squeue(line, UTC)
    assert job.state_reason == "Resources"
    assert job.mem_mb == 1024
    assert (job.num_gpus, job.gpu_type) == (2, "a100")
    assert job.started_at is None, "a pending job's StartTime is an estimate"
    assert job.node_list is None


def test_squeue_array_default_output_is_fixed() -> None:
    line = squeue_line(
        JobArrayID="17_1",
        JobID="19",
        ArrayJobID="17",
        ArrayTaskID="1",
        STDOUT="/w/slurm-19.out",
        STDERR="/w/slurm-19.out",
    )
    (job,) = parse_squeue(line, UTC)
    assert (job.job_id, job.job_id_raw, job.array_job_id, job.array_task_id) == ("17_1", 19, 17, 1)
    assert job.stdout_path == job.stderr_path == "/w/slurm-17_1.out"


def test_squeue_pattern_output_is_expanded() -> None:
    line = squeue_line(STDOUT="logs/%x-%j.out", STDERR="/err/%u/%j.err")
    (job,) = parse_squeue(line, UTC)
    assert job.stdout_path == "/w/logs/train-12.out"
    assert job.stderr_path == "/err/alice/12.err"


def test_squeue_unexpanded_array_range_gives_one_job_per_task() -> None:
    line = squeue_line(
        JobArrayID="17_[1-2]", JobID="17", ArrayJobID="17", ArrayTaskID="1-2", State="PENDING"
    )
    jobs = parse_squeue(line, UTC)
    assert [(j.job_id, j.job_id_raw, j.array_task_id) for j in jobs] == [
        ("17_1", 17, 1),
        ("17_2", 17, 2),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (squeue_line(NumCPUs="two"), "squeue line 2: NumCPUs is not an integer"),
        (squeue_line(SubmitTime="yesterday"), "squeue line 2: SubmitTime is not a time"),
        (squeue_line(tres_alloc="mem=lots"), "squeue line 2: tres-alloc has a bad mem="),
        ("12|12|N/A|\n", "squeue line 2: expected 24 fields, got 3"),
        (squeue_line()[:-1], "squeue line 2: no trailing '|'"),
        (squeue_line(JobID=""), "squeue line 2: JobID is empty"),
    ],
)
def test_squeue_garbage_raises_scheduler_unavailable(line: str, message: str) -> None:
    text = squeue_line() + "\n" + line + "\n"
    with pytest.raises(SchedulerUnavailable, match=message.replace("|", r"\|")) as info:
        parse_squeue(text, UTC)
    assert "\n" not in str(info.value)


# --- sacct edge cases ------------------------------------------------------------------------


def test_squeue_reusing_parses_only_lines_that_changed() -> None:
    captured = (Path(__file__).parent.parent / "fixtures/slurm/squeue_mixed.txt").read_text()
    jobs, lines = parse_squeue_reusing(captured, UTC, {})
    assert jobs == parse_squeue(captured, UTC) and len(jobs) >= 10

    first, *rest = captured.splitlines()
    fields = first.split("|")
    fields[formats.SQUEUE_FIELDS.index("Name")] = "renamed"
    changed = "|".join(fields)
    new_line = squeue_line(JobID="999", JobArrayID="999", ArrayJobID="999")
    text = "\n".join([changed, *rest[1:], new_line]) + "\n"
    again, reused = parse_squeue_reusing(text, UTC, lines)
    assert again == parse_squeue(text, UTC)
    assert len(reused) == len(rest[1:]) + 2  # the line that went is forgotten
    before = {job.job_id: job for job in jobs}
    for job in again:  # an unchanged line's jobs are the very objects parsed before
        assert (job is before.get(job.job_id)) == (job.job_id not in {"999", jobs[0].job_id})
    assert again[0].name == "renamed" and again[-1].job_id == "999"
    with pytest.raises(SchedulerUnavailable, match="squeue line 2"):
        parse_squeue_reusing(f"{rest[1]}\nbroken\n", UTC, lines)


def test_sacct_steps_fold_into_their_job() -> None:
    text = "\n".join(
        [
            sacct_line(),
            sacct_line(JobID="12.batch", JobIDRaw="12.batch", JobName="batch", MaxRSS="2048K",
                       User="", Account="", Comment="", TotalCPU="00:01.000"),
            sacct_line(JobID="12.extern", JobIDRaw="12.extern", JobName="extern", MaxRSS="1024K"),
            sacct_line(JobID="12.0", JobIDRaw="12.0", JobName="python", MaxRSS="1.5G"),
        ]
    )  # fmt: skip
    (job,) = parse_sacct(text, UTC)
    assert job.job_id == "12"
    assert job.max_rss_mb == 1536
    assert job.total_cpu_seconds == 1.5, "the allocation line's TotalCPU is kept"
    assert job.user_name == "alice"
    assert job.comment == "experiment=x"
    assert job.elapsed_seconds == 60


def test_sacct_without_positive_maxrss_has_none() -> None:
    text = sacct_line() + "\n" + sacct_line(JobID="12.batch", JobIDRaw="12.batch", MaxRSS="0")
    (job,) = parse_sacct(text, UTC)
    assert job.max_rss_mb is None


def test_sacct_exit_code_state_and_array_ids() -> None:
    text = "\n".join(
        [
            sacct_line(JobID="10_1", JobIDRaw="11", State="FAILED", ExitCode="3:0"),
            sacct_line(JobID="10_1.batch", JobIDRaw="11.batch", State="FAILED", MaxRSS="100K"),
            sacct_line(JobID="10_2", JobIDRaw="10", State="CANCELLED by 0", ExitCode="0:15"),
        ]
    )
    first, second = parse_sacct(text, UTC)
    assert (first.job_id, first.job_id_raw, first.array_job_id, first.array_task_id) == (
        "10_1",
        11,
        10,
        1,
    )
    assert (first.state, first.exit_code, first.exit_signal) == (JobState.FAILED, 3, 0)
    assert first.max_rss_mb == pytest.approx(100 / 1024)
    assert (second.state, second.exit_code, second.exit_signal) == (JobState.CANCELLED, 0, 15)
    assert second.job_id_raw == 10


def test_sacct_never_started_job_takes_request_memory() -> None:
    line = sacct_line(
        State="CANCELLED by 0",
        NodeList="None assigned",
        AllocTRES="",
        ReqMem="100Mc",
        NCPUS="4",
        Start="None",
        End="2026-11-22T19:05:00",
        ElapsedRaw="0",
    )
    (job,) = parse_sacct(line, UTC)
    assert job.node_list is None
    assert job.mem_mb == 400
    assert job.started_at is None
    assert job.ended_at == datetime(2026, 11, 22, 19, 5, tzinfo=UTC)


def test_sacct_comment_keeps_pipes_and_empty_is_none() -> None:
    jobs = parse_sacct(sacct_line(Comment="a=1|b=2") + "\n" + sacct_line(JobID="13",
                       JobIDRaw="13", Comment=""), UTC)  # fmt: skip
    assert [job.comment for job in jobs] == ["a=1|b=2", None]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (sacct_line(ExitCode="x:y"), "sacct line 1: ExitCode is not exit:signal"),
        (sacct_line(JobIDRaw="abc"), "sacct line 1: JobIDRaw is not an integer"),
        (sacct_line(ElapsedRaw="1.5"), "sacct line 1: ElapsedRaw is not an integer"),
        (sacct_line(TotalCPU="soon"), "sacct line 1: TotalCPU is not a duration"),
        ("12|12|wrap", "sacct line 1: expected 21 fields, got 3"),
    ],
)
def test_sacct_garbage_raises_scheduler_unavailable(line: str, message: str) -> None:
    with pytest.raises(SchedulerUnavailable, match=message):
        parse_sacct(line, UTC)


# --- the real captured output (tests/fixtures/slurm, see its README) --------------------------

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "slurm"
CAPTURE = json.loads((FIXTURES / "capture.json").read_text())
WORKDIR = CAPTURE["workdir"]


def captured(name: str, tz: tzinfo = UTC) -> dict[str, Job]:
    """Return the jobs of one captured squeue or sacct file by job id."""
    text = (FIXTURES / name).read_text()
    jobs = parse_squeue(text, tz) if name.startswith("squeue") else parse_sacct(text, tz)
    by_id = {job.job_id: job for job in jobs}
    assert len(by_id) == len(jobs), "job ids are unique"
    return by_id


def at(clock: str) -> datetime:
    """Return 2026-11-22 at this UTC time of day."""
    return datetime.fromisoformat(f"2026-11-22T{clock}").replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("name", "count"),
    [("squeue_pending.txt", 18), ("squeue_requeued.txt", 18), ("squeue_mixed.txt", 18),
     ("squeue_terminal.txt", 18), ("sacct_jobs.txt", 18), ("sacct_live.txt", 18),
     ("sacct_window.txt", 17), ("sacct_window_states.txt", 18),
     ("sacct_requeued_duplicates.txt", 1)],
)  # fmt: skip
def test_every_captured_file_parses(name: str, count: int) -> None:
    jobs = captured(name)
    assert len(jobs) == count
    assert set(jobs) <= {"1", "2", "3", "4_0", "4_1", "4_2", "5", "6", "7", "8", "9", "10",
                         "11_0", "11_1", "12", "13", "14", "15"}  # fmt: skip


# The README's table "Expected values at the end":
# job id, raw id, squeue State, Reason, CPUs, mem, GPUs, GPU type, RestartCnt
END_TABLE = [
    ("1", 1, "COMPLETED", None, 1, 100, None, None, 0),
    ("2", 2, "FAILED", "NonZeroExitCode", 1, 100, None, None, 0),
    ("3", 3, "CANCELLED", None, 1, 100, None, None, 0),
    ("4_0", 16, "COMPLETED", None, 1, 100, None, None, 0),
    ("4_1", 18, "COMPLETED", None, 1, 100, None, None, 0),
    ("4_2", 4, "COMPLETED", None, 1, 100, None, None, 0),
    ("5", 5, "COMPLETED", None, 1, 100, 1, "a100", 0),
    ("6", 6, "TIMEOUT", "TimeLimit", 1, 100, None, None, 0),
    ("7", 7, "COMPLETED", None, 1, 100, None, None, 1),
    ("8", 8, "CANCELLED", "JobHeldUser", 1, 100, None, None, 0),
    ("9", 9, "COMPLETED", None, 1, 100, None, None, 0),
    ("10", 10, "COMPLETED", None, 1, 100, None, None, 0),
    ("11_0", 17, "COMPLETED", None, 1, 100, None, None, 0),
    ("11_1", 11, "COMPLETED", None, 1, 100, None, None, 0),
    ("12", 12, "COMPLETED", None, 2, 200, None, None, 0),
    ("13", 13, "COMPLETED", None, 1, 100, None, None, 0),
    ("14", 14, "FAILED", "JobLaunchFailure", 1, 100, None, None, 0),
    ("15", 15, "COMPLETED", None, 1, 100, 2, "a100", 0),
]


def test_squeue_at_the_end_matches_the_readme_table() -> None:
    jobs = captured("squeue_terminal.txt")
    rows = [
        (j.job_id, j.job_id_raw, j.state.value, j.state_reason, j.num_cpus, j.mem_mb,
         j.num_gpus, j.gpu_type, j.restarts)
        for j in (jobs[row[0]] for row in END_TABLE)
    ]  # fmt: skip
    assert rows == END_TABLE
    for job in jobs.values():
        assert (job.user_name, job.account, job.partition, job.num_nodes) == (
            "root",
            "root",
            "debug",
            1,
        )
        assert job.work_dir == WORKDIR
        assert job.exit_code is None, "squeue has no exit code"
        assert job.ended_at is not None
    assert jobs["4_1"].array_job_id == 4 and jobs["4_1"].array_task_id == 1
    assert jobs["1"].array_job_id is None and jobs["1"].array_task_id is None
    assert (jobs["1"].started_at, jobs["1"].ended_at) == (at("19:53:32"), at("19:53:35"))
    assert jobs["7"].submitted_at == at("19:53:34"), "a requeue moves SubmitTime"


def test_squeue_output_paths_are_the_files_slurm_wrote() -> None:
    jobs = captured("squeue_terminal.txt")
    written = set(CAPTURE["facts"]["files_written"])
    for job in jobs.values():
        assert job.stdout_path == job.stderr_path
        assert job.stdout_path is not None
        directory, _, name = job.stdout_path.rpartition("/")
        assert directory == WORKDIR
        assert (name in written) == (job.job_id != "8"), job.job_id  # job 8 never ran
    assert jobs["4_0"].stdout_path == f"{WORKDIR}/slurm-4_0.out", "not squeue's slurm-16.out"
    assert jobs["10"].stdout_path == f"{WORKDIR}/named-out-10.out"
    assert jobs["11_0"].stdout_path == f"{WORKDIR}/arr-out-11_0.out"


def test_squeue_comments() -> None:
    jobs = captured("squeue_terminal.txt")
    assert jobs["1"].comment == "experiment=capture run=a-exit0 tags=a,b"
    assert jobs["13"].comment == "experiment=weird;run=l|pipe tags=x,y; note=a|b"
    assert jobs["9"].comment is None


def test_squeue_at_submission_everything_pending() -> None:
    jobs = captured("squeue_pending.txt")
    for job in jobs.values():
        assert job.state is JobState.PENDING
        assert (job.node_list, job.started_at, job.ended_at) == (None, None, None)
        assert job.submitted_at == at("19:53:29")
    reasons = {job_id: job.state_reason for job_id, job in jobs.items()}
    assert reasons["1"] is None and reasons["4_2"] is None and reasons["11_1"] is None
    assert reasons["8"] == "JobHeldUser"
    assert reasons["2"] == "Priority"
    assert [(jobs[t].job_id_raw, jobs[t].array_task_id) for t in ("4_0", "4_1", "4_2")] == [
        (4, 0),
        (4, 1),
        (4, 2),
    ], "every pending task of array 4 carries the array's own raw id"
    assert jobs["4_1"].stdout_path == f"{WORKDIR}/slurm-4_1.out"
    assert jobs["11_0"].stdout_path == f"{WORKDIR}/arr-out-11_0.out"
    assert (jobs["5"].num_gpus, jobs["5"].gpu_type) == (1, None), "untyped until it runs"
    assert (jobs["15"].num_gpus, jobs["12"].mem_mb, jobs["12"].num_cpus) == (2, 200, 2)


def test_squeue_just_after_requeue() -> None:
    job = captured("squeue_requeued.txt")["7"]
    assert (job.state, job.state_reason, job.restarts) == (JobState.PENDING, "BeginTime", 1)
    assert job.submitted_at == at("19:53:34")
    assert job.started_at is None, "StartTime 19:55:35 is only the earliest restart"
    assert job.ended_at is None


def test_squeue_mixed_moment() -> None:
    jobs = captured("squeue_mixed.txt")
    states = {job_id: job.state.value for job_id, job in jobs.items()}
    assert {k for k, v in states.items() if v == "RUNNING"} == {"5", "6", "14"}
    assert {k for k, v in states.items() if v == "PENDING"} == {"4_1", "4_2", "7", "8", "15"}
    assert jobs["6"].ended_at is None, "a running job's EndTime is its time limit"
    assert jobs["6"].started_at is not None
    assert (jobs["4_1"].job_id_raw, jobs["4_1"].state_reason) == (4, "JobArrayTaskLimit")
    assert (jobs["4_0"].job_id_raw, jobs["4_0"].state) == (16, JobState.COMPLETED)
    assert (jobs["7"].restarts, jobs["7"].started_at) == (1, None)
    assert (jobs["5"].num_gpus, jobs["5"].gpu_type) == (1, "a100")
    assert jobs["15"].started_at is None, "Resources: the StartTime is a forecast"


def test_squeue_held_then_cancelled_never_started() -> None:
    job = captured("squeue_terminal.txt")["8"]
    assert (job.state, job.state_reason) == (JobState.CANCELLED, "JobHeldUser")
    assert (job.node_list, job.started_at) == (None, None)
    assert job.ended_at == at("19:53:42")


def test_squeue_times_are_local() -> None:
    berlin = captured("squeue_terminal.txt", BERLIN)["1"]
    assert berlin.submitted_at == at("18:53:29")


# sacct at the end: job id, raw id, State, exit code, signal, ElapsedRaw, CPUs, mem, GPUs
SACCT_TABLE = [
    ("1", 1, "COMPLETED", 0, 0, 3, 1, 100, None),
    ("2", 2, "FAILED", 3, 0, 3, 1, 100, None),
    ("3", 3, "CANCELLED", 0, 0, 0, 1, 100, None),
    ("4_0", 16, "COMPLETED", 0, 0, 10, 1, 100, None),
    ("4_1", 18, "COMPLETED", 0, 0, 10, 1, 100, None),
    ("4_2", 4, "COMPLETED", 0, 0, 10, 1, 100, None),
    ("5", 5, "COMPLETED", 0, 0, 25, 1, 100, 1),
    ("6", 6, "TIMEOUT", 0, 0, 87, 1, 100, None),
    ("7", 7, "COMPLETED", 0, 0, 20, 1, 100, None),
    ("8", 8, "CANCELLED", 0, 0, 0, 1, 100, None),
    ("12", 12, "COMPLETED", 0, 0, 3, 2, 200, None),
    ("14", 14, "FAILED", 0, 9, 5, 1, 100, None),
    ("15", 15, "COMPLETED", 0, 0, 8, 1, 100, 2),
]


def test_sacct_at_the_end_matches_the_readme_table() -> None:
    jobs = captured("sacct_jobs.txt")
    rows = [
        (j.job_id, j.job_id_raw, j.state.value, j.exit_code, j.exit_signal, j.elapsed_seconds,
         j.num_cpus, j.mem_mb, j.num_gpus)
        for j in (jobs[row[0]] for row in SACCT_TABLE)
    ]  # fmt: skip
    assert rows == SACCT_TABLE
    assert jobs["5"].gpu_type == jobs["15"].gpu_type == "a100"
    assert jobs["13"].comment == "experiment=weird;run=l|pipe tags=x,y; note=a|b"
    assert jobs["9"].comment is None
    assert (jobs["11_1"].array_job_id, jobs["11_1"].array_task_id) == (11, 1)
    assert (jobs["7"].submitted_at, jobs["7"].started_at) == (at("19:53:34"), at("19:56:29"))
    assert jobs["6"].ended_at == at("19:54:59")


def test_sacct_folds_steps_into_usage() -> None:
    jobs = captured("sacct_jobs.txt")
    assert jobs["14"].max_rss_mb == pytest.approx(318172 / 1024)
    assert jobs["5"].max_rss_mb == pytest.approx(4704 / 1024)
    assert jobs["1"].max_rss_mb is None, "its batch step ended before the first sample"
    assert jobs["12"].total_cpu_seconds == pytest.approx(0.014), "the job line sums its steps"
    assert jobs["12"].name == "k-job", "step 12.0 (JobName sleep) does not replace the job"


def test_sacct_held_then_cancelled() -> None:
    job = captured("sacct_jobs.txt")["8"]
    assert (job.node_list, job.started_at, job.max_rss_mb) == (None, None, None)
    assert job.ended_at == at("19:53:42")
    assert job.mem_mb == 100, "ReqMem, since AllocTRES is empty"
    assert job.total_cpu_seconds == 0


def test_sacct_while_jobs_run() -> None:
    jobs = captured("sacct_live.txt")
    running = jobs["5"]
    assert (running.state, running.exit_code, running.ended_at) == (JobState.RUNNING, None, None)
    assert running.comment is None, "sacct has no comment until the job ends"
    assert (running.num_gpus, running.gpu_type) == (1, "a100")
    for task in ("4_1", "4_2"):  # one line, `4_[1-2%1]`
        pending = jobs[task]
        assert (pending.state, pending.job_id_raw, pending.array_job_id) == (
            JobState.PENDING,
            4,
            4,
        )
        assert (pending.node_list, pending.started_at, pending.exit_code) == (None, None, None)
        assert pending.mem_mb == 100
    assert jobs["7"].state is JobState.PENDING
    assert jobs["7"].submitted_at == at("19:53:34")


def test_sacct_duplicates_keep_the_latest_record() -> None:
    (job,) = captured("sacct_requeued_duplicates.txt").values()
    assert (job.job_id, job.state, job.submitted_at) == ("7", JobState.COMPLETED, at("19:53:34"))
    assert job.max_rss_mb == pytest.approx(4784 / 1024)


def test_sacct_window_leaves_out_the_held_job_unless_states_are_given() -> None:
    assert set(captured("sacct_window_states.txt")) - set(captured("sacct_window.txt")) == {"8"}


def test_captured_config_and_version() -> None:
    config = (FIXTURES / "scontrol_show_config.txt").read_text()
    assert parse_cluster_name(config) == "hpctest"
    assert parse_version(config) == "22.05.8"
    assert parse_version((FIXTURES / "scontrol_version.txt").read_text()) == "22.05.8"


def test_sacct_placeholder_record_parses() -> None:
    (job,) = captured("sacct_placeholder.txt").values()
    assert (job.job_id, job.name, job.state) == ("104", "allocation", JobState.PENDING)
    assert (job.partition, job.num_cpus, job.mem_mb, job.comment) == (None, 0, None, None)
    assert job.exit_code is None, "not ended: the stand-in's 0:0 is no exit code"


def test_parse_config_value_reads_accounting_store_flags() -> None:
    from hpcsync.slurm.parsers import parse_config_value

    text = (FIXTURES / "scontrol_show_config.txt").read_text()
    assert parse_config_value(text, "AccountingStoreFlags") == "job_comment"
    assert parse_config_value(text, "NoSuchKey") == ""
