"""Live usage from sstat (parsed from real captures), TRES usage strings, and the live refresh."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hpcsync.db.repository import Repository
from hpcsync.errors import SchedulerUnavailable
from hpcsync.models import Job, JobState, Run, RunStatus
from hpcsync.slurm.usage import (
    SSTAT_FIELDS,
    LiveUsage,
    TresUsage,
    live_usage,
    parse_sstat,
    parse_tres_usage,
    sstat_args,
)
from hpcsync.usage_refresh import cpu_efficiency, live_usage_rows, refresh_live_usage

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "slurm_usage"
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def _fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


# -- sstat --------------------------------------------------------------------------------------


def test_sstat_arguments_ask_for_every_step_in_one_call() -> None:
    args = sstat_args(["58", 61, "58", "59"])
    assert args[:3] == ["-a", "--parsable2", "--noheader"]
    assert args[3] == "--format=JobID,MaxRSS,AveCPU,NTasks,TRESUsageInTot"
    assert args[4:] == ["-j", "58,61,59"]


def test_parse_sstat_captured_from_the_cluster() -> None:
    usage = parse_sstat(_fixture("sstat_running.txt"))
    assert set(usage) == {"58", "61", "59"}  # the pending 60 and the finished 53: absent
    # 58: the batch step (150 MB python) and step 58.0 (60 MB), 8 s of CPU each.
    assert usage["58"] == LiveUsage(max_rss_mb=176188 / 1024, total_cpu_seconds=16.0, steps=2)
    # 61.batch is printed twice (asked as 61 and through array 59); it counts once.
    assert usage["61"] == LiveUsage(max_rss_mb=3144 / 1024, total_cpu_seconds=0.0, steps=1)
    assert usage["59"].steps == 1


def test_parse_sstat_units_het_jobs_and_the_avecpu_fallback() -> None:
    text = (
        "70.0|70.50M|00:00:11|1|cpu=00:00:11,mem=70.50M\n"
        "70.batch|1.5G|00:00:02|1|cpu=00:00:02,mem=1.5G\n"
        "71+1.0|2048K|00:01:00|4|\n"
        "71+0.batch|0|00:00:00|1|cpu=00:00:00\n"
        "72.batch||||\n"
        "\n"
    )
    usage = parse_sstat(text)
    assert usage["70"] == LiveUsage(max_rss_mb=1536.0, total_cpu_seconds=13.0, steps=2)
    # No TRESUsageInTot: AveCPU x NTasks.
    assert usage["71"] == LiveUsage(max_rss_mb=2.0, total_cpu_seconds=240.0, steps=2)
    assert usage["72"] == LiveUsage(max_rss_mb=None, total_cpu_seconds=None, steps=1)


@pytest.mark.parametrize(
    "line",
    [
        "58.batch|176188K|00:00:08|1",
        "58.batch|lots|00:00:08|1|cpu=00:00:08",
        "58.batch|176188K|00:00:08|1|cpu=soon",
    ],
)
def test_parse_sstat_refuses_what_it_cannot_read(line: str) -> None:
    with pytest.raises(SchedulerUnavailable, match="sstat line 1"):
        parse_sstat(line + "\n")


def _fake_sstat(tmp_path: Path, body: str) -> str:
    """Return a fake sstat program that logs its arguments to args.txt, then runs `body`."""
    program = tmp_path / "sstat"
    program.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/args.txt\n{body}\n')
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    return str(program)


def test_live_usage_runs_one_sstat_call_and_keeps_the_asked_jobs(tmp_path: Path) -> None:
    fixture = FIXTURES / "sstat_running.txt"
    stderr = FIXTURES / "sstat_running.stderr"
    program = _fake_sstat(tmp_path, f"cat {fixture}; cat {stderr} >&2")
    usage = live_usage(["61", 58, "60"], env=dict(os.environ), sstat=program)
    assert set(usage) == {"58", "61"}  # 59 was printed, but not asked for
    assert usage["58"].total_cpu_seconds == 16.0
    calls = (tmp_path / "args.txt").read_text().splitlines()
    assert calls == [f"-a --parsable2 --noheader --format={','.join(SSTAT_FIELDS)} -j 58,60,61"]
    assert live_usage([], sstat=program) == {}
    assert len((tmp_path / "args.txt").read_text().splitlines()) == 1


@pytest.mark.parametrize(
    ("body", "timeout", "message"),
    [
        ("echo 'sstat: error: slurm_load_jobs: Unable to contact slurm controller' >&2; exit 1",
         5.0, "status 1: sstat: error: slurm_load_jobs"),
        ("exec sleep 5", 0.3, "timeout"),
        ("echo '58.batch|1K'", 5.0, "expected 5 fields"),
    ],
)  # fmt: skip
def test_live_usage_failures_are_scheduler_unavailable(
    tmp_path: Path, body: str, timeout: float, message: str
) -> None:
    program = _fake_sstat(tmp_path, body)
    with pytest.raises(SchedulerUnavailable, match=message):
        live_usage(["58"], sstat=program, timeout=timeout)


def test_live_usage_without_sstat_is_scheduler_unavailable(tmp_path: Path) -> None:
    with pytest.raises(SchedulerUnavailable, match="not found"):
        live_usage(["58"], sstat=str(tmp_path / "missing"))


# -- TRES usage strings -------------------------------------------------------------------------


def test_parse_tres_usage_with_gpu_entries() -> None:
    usage = parse_tres_usage("cpu=00:00:01,gres/gpuutil=53,gres/gpumem=1024M,mem=12M")
    assert usage == TresUsage(cpu_seconds=1.0, mem_mb=12.0, gpu_util=53.0, gpu_mem_mb=1024.0)


def test_parse_tres_usage_noconvert_bytes() -> None:
    # sacct --noconvert on a cluster with the gpu/nvml plugin (documented by a site's docs).
    usage = parse_tres_usage(
        "cpu=00:56:24,energy=0,fs/disk=350130624578,gres/gpumem=40777023488,"
        "gres/gpuutil=100,mem=10621726720,pages=3465,vmem=10439041024"
    )
    assert usage.cpu_seconds == 56 * 60 + 24
    assert usage.gpu_util == 100.0
    assert usage.gpu_mem_mb == pytest.approx(40777023488 / 2**20)
    assert usage.mem_mb == pytest.approx(10621726720 / 2**20)
    assert usage.vmem_mb == pytest.approx(10439041024 / 2**20)
    assert usage.other == {"energy": 0.0, "fs/disk": 350130624578.0, "pages": 3465.0}


def test_parse_tres_usage_of_captured_sacct_steps() -> None:
    lines = [line.split("|") for line in _fixture("sacct_tres_usage.txt").splitlines()]
    by_step = {fields[0]: fields for fields in lines}
    assert parse_tres_usage(by_step["58"][6]) == TresUsage()  # the job line: empty
    average = parse_tres_usage(by_step["58.batch"][6])
    assert average.cpu_seconds == 19.0
    assert average.mem_mb == pytest.approx(176188 / 1024)
    assert average.vmem_mb == pytest.approx(379.5)
    assert average.gpu_util is None and average.gpu_mem_mb is None  # not tracked here
    assert parse_tres_usage(by_step["58.batch"][7]).other["pages"] == 3.0


@pytest.mark.parametrize(
    "text", ["", "N/A", "  ", "cpu=,mem=", "gres/gpuutil=N/A", "garbage-without-equals"]
)
def test_parse_tres_usage_of_nothing(text: str) -> None:
    assert parse_tres_usage(text) == TresUsage()


@pytest.mark.parametrize("text", ["cpu=later", "gres/gpuutil=high", "mem=12Q"])
def test_parse_tres_usage_refuses_bad_values(text: str) -> None:
    with pytest.raises(ValueError):
        parse_tres_usage(text)


# -- the live refresh ---------------------------------------------------------------------------


def _run(
    job_id: int,
    *,
    state: JobState = JobState.RUNNING,
    cpus: int | None = 2,
    started: datetime | None = NOW - timedelta(seconds=100),
    run_id: int | None = 1,
) -> Run:
    job = Job(
        job_id=str(job_id),
        job_id_raw=job_id,
        state=state,
        num_cpus=cpus,
        started_at=started,
        submitted_at=NOW - timedelta(seconds=200),
        comment="experiment=usage",
    )
    return Run(cluster="test", experiment="usage", job=job, status=RunStatus.RUNNING, id=run_id)


def test_cpu_efficiency_is_cpu_time_over_allocated_cpus_and_elapsed() -> None:
    usage = LiveUsage(max_rss_mb=1.0, total_cpu_seconds=50.0, steps=1)
    assert cpu_efficiency(_run(1), usage, NOW) == 0.25
    assert cpu_efficiency(_run(1, cpus=1), LiveUsage(1.0, 500.0), NOW) == 1.0  # capped
    assert cpu_efficiency(_run(1, cpus=None), usage, NOW) is None
    assert cpu_efficiency(_run(1, started=None), usage, NOW) is None
    assert cpu_efficiency(_run(1, started=NOW), usage, NOW) is None
    assert cpu_efficiency(_run(1), LiveUsage(1.0, None), NOW) is None


def test_live_usage_rows_match_runs_by_raw_job_id() -> None:
    runs = [_run(58, run_id=1), _run(61, run_id=2), _run(99, run_id=3)]
    usage = {"58": LiveUsage(170.0, 50.0, 2), "61": LiveUsage(None, None, 1)}
    rows = live_usage_rows(runs, usage, NOW)
    assert [(row.run_id, row.max_rss_mb, row.cpu_efficiency) for row in rows] == [(1, 170.0, 0.25)]


def test_refresh_writes_running_runs_and_never_lowers_max_rss(
    repository: Repository, tmp_path: Path
) -> None:
    saved = repository.save_runs(
        [
            (_run(58, run_id=None), False, []),
            (_run(59, run_id=None, state=JobState.PENDING), False, []),
            (_run(61, run_id=None), True, []),  # already final: accounting owns it
        ],
        NOW,
    )
    fixture = FIXTURES / "sstat_running.txt"
    program = _fake_sstat(tmp_path, f"cat {fixture}")
    stats = refresh_live_usage(repository, saved, sstat=program, clock=lambda: NOW)
    assert (stats.running, stats.reported, stats.written) == (2, 2, 2)
    assert "2 running jobs" in stats.summary()
    # Only 58 and 61 were asked for: 59 is pending.
    assert (tmp_path / "args.txt").read_text().split()[-1] == "58,61"

    running = repository.find_run("58")
    assert running is not None
    assert running["max_rss_mb"] == pytest.approx(176188 / 1024)
    assert running["cpu_efficiency"] == pytest.approx(16.0 / (2 * 100))
    final = repository.find_run("61")
    assert final is not None
    assert final["max_rss_mb"] is None and final["cpu_efficiency"] is None

    # A later sstat with a smaller RSS (the big step ended) keeps the largest seen.
    smaller = tmp_path / "smaller.txt"
    smaller.write_text("58.batch|1024K|00:00:30|1|cpu=00:00:30\n")
    program = _fake_sstat(tmp_path, f"cat {smaller}")
    refresh_live_usage(repository, saved, sstat=program, clock=lambda: NOW)
    running = repository.find_run("58")
    assert running is not None
    assert running["max_rss_mb"] == pytest.approx(176188 / 1024)
    assert running["cpu_efficiency"] == pytest.approx(30.0 / (2 * 100))


def test_refresh_without_running_runs_calls_nothing(repository: Repository, tmp_path: Path) -> None:
    program = _fake_sstat(tmp_path, "exit 1")
    stats = refresh_live_usage(repository, [_run(5, state=JobState.PENDING)], sstat=program)
    assert (stats.running, stats.reported, stats.written) == (0, 0, 0)
    assert not (tmp_path / "args.txt").exists()
