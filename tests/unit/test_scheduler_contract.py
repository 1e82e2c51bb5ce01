"""Every Scheduler backend, fed the same captured scenario, keeps the same contract."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from slurm_scenarios import (
    END,
    SCENARIOS,
    STANDIN,
    FakeSlurm,
    Scenario,
    accounting_records,
    controller_records,
)

from hpcsync.errors import ConfigError, SchedulerUnavailable
from hpcsync.models import Job
from hpcsync.slurm import make_scheduler, same_release
from hpcsync.slurm.base import Scheduler
from hpcsync.slurm.cli import WINDOW_STATES, CliScheduler
from hpcsync.slurm.fake import FakeScheduler
from hpcsync.slurm.pyslurm_backend import PyslurmScheduler

LIST_OPTIONAL = frozenset({"exit_code", "exit_signal"})
"""squeue has no exit code; pyslurm reads it from the controller."""
HISTORY_OPTIONAL = frozenset({"restarts", "stdout_path", "stderr_path", "state_reason"})
"""sacct 22.05 has no restart count or output paths; slurmdbd (pyslurm) has."""


@dataclass
class Backend:
    """A scheduler under test, with the knobs to break it and to count its calls."""

    scheduler: Scheduler
    break_it: Callable[[], None]
    list_calls: Callable[[], int]
    history_calls: Callable[[], int]


def _cli(tmp_path: Path, scenario: Scenario) -> Backend:
    fake = FakeSlurm(tmp_path / "bin", scenario).install()
    cli = CliScheduler(timeout=10, tz=scenario.tz, **fake.programs)
    return Backend(
        cli,
        lambda: fake.behave(squeue="exit", sacct="exit", scontrol="exit"),
        lambda: cli.calls["squeue"],
        lambda: cli.calls["sacct"],
    )


def _pyslurm(monkeypatch: pytest.MonkeyPatch, scenario: Scenario) -> Backend:
    for name in [name for name in sys.modules if name == "pyslurm" or name.startswith("pyslurm.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(STANDIN))
    import pyslurm

    cluster = scenario.config_text.split("ClusterName", 1)[1].split("=", 1)[1].split()[0]
    pyslurm._standin.load_scenario(
        controller_records(scenario), accounting_records(scenario), cluster_name=cluster
    )
    calls = pyslurm._standin.calls
    return Backend(
        PyslurmScheduler(),
        lambda: pyslurm._standin.fail("Unable to contact slurm controller (connect failure)"),
        lambda: calls["slurm_load_jobs"],
        lambda: calls["slurmdb_jobs_get"],
    )


def _fake(scenario: Scenario) -> Backend:
    fake = FakeScheduler(history=scenario.accounting_jobs(), cluster="hpctest")
    fake.controller = {job.job_id: job for job in scenario.controller_jobs()}
    return Backend(
        fake,
        fake.fail,
        lambda: fake.calls["list_jobs"],
        lambda: fake.calls["job_history"],
    )


@pytest.fixture(params=SCENARIOS, ids=str)
def scenario(request: pytest.FixtureRequest) -> Scenario:
    """Return each captured scenario."""
    chosen: Scenario = request.param
    return chosen


@pytest.fixture(params=["cli", "pyslurm", "fake"])
def backend(
    request: pytest.FixtureRequest,
    scenario: Scenario,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Backend:
    """Return each backend loaded with the scenario."""
    if request.param == "cli":
        return _cli(tmp_path, scenario)
    if request.param == "pyslurm":
        return _pyslurm(monkeypatch, scenario)
    return _fake(scenario)


def _by_id(jobs: list[Job]) -> dict[str, Job]:
    ids = [job.job_id for job in jobs]
    assert len(ids) == len(set(ids)), f"duplicate job ids: {sorted(ids)}"
    return {job.job_id: job for job in jobs}


def _assert_same(actual: Job, expected: Job, optional: frozenset[str]) -> None:
    """Compare every field; `optional` ones may be None on either side."""
    for name in Job.__dataclass_fields__:
        got, want = getattr(actual, name), getattr(expected, name)
        if name in optional and (got is None or want is None):
            continue
        if name == "total_cpu_seconds" and got is not None and want is not None:
            assert got == pytest.approx(want, abs=1.0), f"{actual.job_id}.{name}"
            continue
        assert got == want, f"{actual.job_id}.{name}: {got!r} != {want!r}"


def _assert_facts(job: Job, facts: dict[str, Any], optional: frozenset[str]) -> None:
    for name, want in facts.items():
        got = getattr(job, name)
        if name in optional and got is None:
            continue
        assert got == want, f"{job.job_id}.{name}: {got!r} != {want!r}"


# --- the contract ---------------------------------------------------------------------------


def test_cluster_name_and_version(backend: Backend) -> None:
    assert backend.scheduler.cluster_name() == "hpctest"
    assert backend.scheduler.version() in {"22.05.8", "25.11.2"}


def test_list_jobs_holds_the_scenario_in_one_call(backend: Backend, scenario: Scenario) -> None:
    jobs = _by_id(backend.scheduler.list_jobs())
    expected = _by_id(scenario.controller_jobs())
    assert sorted(jobs) == sorted(expected)
    assert set(scenario.live) <= set(jobs)
    for job_id, job in jobs.items():
        _assert_same(job, expected[job_id], LIST_OPTIONAL)
        _assert_facts(job, scenario.live.get(job_id, {}), LIST_OPTIONAL)
    assert backend.list_calls() == 1


def test_job_history_gives_final_state_and_exit_code_in_one_call(
    backend: Backend, scenario: Scenario
) -> None:
    wanted = sorted(scenario.final)
    jobs = _by_id(backend.scheduler.job_history(wanted))
    assert sorted(jobs) == wanted
    expected = _by_id(scenario.accounting_jobs())
    for job_id, job in jobs.items():
        _assert_same(job, expected[job_id], HISTORY_OPTIONAL)
        _assert_facts(job, scenario.final[job_id], HISTORY_OPTIONAL)
    assert backend.history_calls() == 1


def test_job_history_of_nothing_asks_nothing(backend: Backend) -> None:
    assert backend.scheduler.job_history([]) == []
    assert backend.history_calls() == 0


def test_job_history_of_an_array_id_gives_every_task(backend: Backend, scenario: Scenario) -> None:
    tasks = sorted(job.job_id for job in scenario.accounting_jobs() if job.array_job_id == 4)
    assert tasks == ["4_0", "4_1", "4_2"]
    jobs = backend.scheduler.job_history(["4"])
    assert sorted(job.job_id for job in jobs) == tasks
    # In the live scenario 4_1 is still inside the array's pending record (`4_[1-2%1]`).
    one = backend.scheduler.job_history(["4_1"])
    assert [(job.job_id, job.array_task_id) for job in one] == [("4_1", 1)]


@pytest.mark.parametrize("scenario", [END], indirect=True, ids=str)
def test_jobs_between_gives_the_window(backend: Backend, scenario: Scenario) -> None:
    assert scenario.window is not None
    start, end = scenario.window
    jobs = _by_id(backend.scheduler.jobs_between(start, end))
    expected = {job.job_id for job in scenario.window_jobs()}
    assert "8" in expected, "sacct with --state returns the held-then-cancelled job"
    if isinstance(backend.scheduler, PyslurmScheduler):
        # pyslurm's JobFilter cannot ask by state, so slurmdbd's plain window applies to it.
        expected -= scenario.never_eligible
    assert set(jobs) == expected


@pytest.mark.parametrize("scenario", [END], indirect=True, ids=str)
def test_purged_job_is_only_in_history(backend: Backend, scenario: Scenario) -> None:
    listed = {job.job_id for job in backend.scheduler.list_jobs()}
    assert not listed & scenario.purged
    history = _by_id(backend.scheduler.job_history(sorted(scenario.purged)))
    assert sorted(history) == sorted(scenario.purged)
    assert history["2"].exit_code == 3


def test_unavailable_scheduler_raises_scheduler_unavailable(backend: Backend) -> None:
    backend.break_it()
    start = datetime(2026, 11, 22, 19, tzinfo=UTC)
    calls: list[Callable[[], object]] = [
        backend.scheduler.list_jobs,
        lambda: backend.scheduler.job_history(["1"]),
        lambda: backend.scheduler.jobs_between(start, start + timedelta(hours=1)),
        backend.scheduler.cluster_name,
    ]
    for call in calls:
        with pytest.raises(SchedulerUnavailable) as info:
            call()
        assert "\n" not in str(info.value)


# --- the CLI backend's own failures and arguments ------------------------------------------


@pytest.fixture
def fake_slurm(tmp_path: Path) -> FakeSlurm:
    """Return fake Slurm programs serving the scenario."""
    return FakeSlurm(tmp_path / "bin", END).install()


def test_cli_program_missing(tmp_path: Path) -> None:
    cli = CliScheduler(timeout=5, squeue=str(tmp_path / "no-squeue"))
    with pytest.raises(SchedulerUnavailable, match=r"squeue: .*no-squeue not found"):
        cli.list_jobs()


def test_cli_program_not_on_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SchedulerUnavailable, match="sacct: sacct not found on PATH"):
        CliScheduler(timeout=5).job_history(["1"])


def test_cli_programs_found_on_path(monkeypatch: pytest.MonkeyPatch, fake_slurm: FakeSlurm) -> None:
    monkeypatch.setenv("PATH", str(fake_slurm.directory))
    cli = CliScheduler(timeout=10, tz=END.tz)
    assert cli.cluster_name() == "hpctest"
    assert len(cli.list_jobs()) == len(END.controller_jobs())


def test_cli_exit_status_names_program_and_first_stderr_line(fake_slurm: FakeSlurm) -> None:
    fake_slurm.behave(squeue="exit")
    cli = CliScheduler(timeout=10, **fake_slurm.programs)
    with pytest.raises(SchedulerUnavailable) as info:
        cli.list_jobs()
    assert str(info.value) == (
        "squeue exited with status 1: "
        "squeue: error: Unable to contact slurm controller (connect failure)"
    )


def test_cli_timeout(fake_slurm: FakeSlurm) -> None:
    fake_slurm.behave(sacct="sleep")
    cli = CliScheduler(timeout=0.5, **fake_slurm.programs)
    with pytest.raises(SchedulerUnavailable, match=r"sacct: no answer within 0\.5 s"):
        cli.job_history(["1"])


@pytest.mark.parametrize("program", ["squeue", "sacct", "scontrol"])
def test_cli_garbage_output(fake_slurm: FakeSlurm, program: str) -> None:
    fake_slurm.behave(**{program: "garbage"})
    cli = CliScheduler(timeout=10, **fake_slurm.programs)
    assert END.window is not None
    start, end = END.window
    call: dict[str, Callable[[], object]] = {
        "squeue": cli.list_jobs,
        "sacct": lambda: cli.jobs_between(start, end),
        "scontrol": cli.cluster_name,
    }
    with pytest.raises(SchedulerUnavailable, match=f"^{program}"):
        call[program]()


def test_cli_not_executable(fake_slurm: FakeSlurm, tmp_path: Path) -> None:
    text_file = tmp_path / "squeue.txt"
    text_file.write_text("not a program")
    cli = CliScheduler(timeout=10, squeue=str(text_file))
    with pytest.raises(SchedulerUnavailable, match="squeue: could not run"):
        cli.list_jobs()


def test_cli_arguments(fake_slurm: FakeSlurm) -> None:
    cli = CliScheduler(timeout=10, tz=END.tz, **fake_slurm.programs)
    assert END.window is not None
    start, end = END.window
    cli.list_jobs()
    cli.job_history(["7", "10_1", "7"])
    cli.jobs_between(start, end)
    cli.cluster_name()
    cli.version()
    squeue, history, window, config = fake_slurm.calls()
    assert squeue[:7] == ["squeue", "-a", "-r", "-t", "all", "-h", "-O"]
    assert history[-2:] == ["-j", "7,10_1,10"], "an array task's array id is asked too"
    assert "--parsable2" in history and "--noheader" in history and "-a" in history
    assert window[window.index("-S") + 1] == start.astimezone(END.tz).strftime("%Y-%m-%dT%H:%M:%S")
    assert f"--state={WINDOW_STATES}" in window
    assert config == ["scontrol", "show", "config"], "scontrol is asked once, then remembered"
    assert cli.calls == {"squeue": 1, "sacct": 2, "scontrol": 1}


def test_cli_overrides_slurm_time_format(fake_slurm: FakeSlurm) -> None:
    cli = CliScheduler(timeout=10, env={"SLURM_TIME_FORMAT": "relative", "SLURM_CONF": "/x"})
    assert cli.env == {"SLURM_TIME_FORMAT": "standard", "SLURM_CONF": "/x"}


# --- the fake's own scripting ---------------------------------------------------------------


def test_fake_purge_update_and_fail_count() -> None:
    jobs = END.controller_jobs()
    fake = FakeScheduler(jobs)
    first = jobs[0].job_id
    fake.update(first, restarts=5)
    fake.purge(first)
    assert first not in {job.job_id for job in fake.list_jobs()}
    (history,) = fake.job_history([first])
    assert history.restarts == 5
    fake.fail("down", times=1)
    with pytest.raises(SchedulerUnavailable, match="down"):
        fake.list_jobs()
    assert fake.list_jobs()
    assert fake.calls["list_jobs"] == 3
    fake.remove(first)
    assert fake.job_history([first]) == []
    with pytest.raises(KeyError):
        fake.update(first, restarts=1)


# --- choosing a backend ---------------------------------------------------------------------


def _scontrol_printing(tmp_path: Path, version: str) -> str:
    program = tmp_path / "scontrol"
    program.write_text(
        f"#!/bin/sh\necho 'ClusterName = hpctest'\necho 'SLURM_VERSION = {version}'\n"
    )
    program.chmod(0o755)
    return str(program)


def _without_pyslurm(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in sys.modules if name == "pyslurm" or name.startswith("pyslurm.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pyslurm", None)  # makes `import pyslurm` fail


def _with_standin(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in sys.modules if name == "pyslurm" or name.startswith("pyslurm.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(STANDIN))


@pytest.mark.parametrize(
    "case",
    [
        (False, "22.05.8", "cli", "pyslurm is not installed"),
        (True, "22.05.8", "cli", "pyslurm 25.11.2 does not match Slurm 22.05.8"),
        (True, "25.11.1", "pyslurm", "pyslurm 25.11.2 for Slurm 25.11.1"),
    ],
)
def test_auto_backend(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    case: tuple[bool, str, str, str],
) -> None:
    installed, cluster_version, chosen, why = case
    if installed:
        _with_standin(monkeypatch)
    else:
        _without_pyslurm(monkeypatch)
    caplog.set_level(logging.DEBUG, logger="hpcsync.slurm")
    scontrol = _scontrol_printing(tmp_path, cluster_version)
    scheduler = make_scheduler("auto", timeout=5, scontrol=scontrol)
    assert scheduler.name == chosen
    choices = [r.getMessage() for r in caplog.records if r.name == "hpcsync.slurm"]
    assert len(choices) == 1
    assert choices[0].startswith(f"slurm backend: {chosen}") and why in choices[0]


def test_auto_backend_falls_back_when_scontrol_fails(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _with_standin(monkeypatch)
    scheduler = make_scheduler("auto", timeout=5, scontrol=str(tmp_path / "missing"))
    assert isinstance(scheduler, CliScheduler)


def test_configured_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    _without_pyslurm(monkeypatch)
    assert isinstance(make_scheduler("cli", timeout=5), CliScheduler)
    with pytest.raises(SchedulerUnavailable, match="pyslurm: cannot import"):
        make_scheduler("pyslurm", timeout=5)
    with pytest.raises(ConfigError, match="unknown backend 'slurmrestd'"):
        make_scheduler("slurmrestd", timeout=5)


def test_same_release() -> None:
    assert same_release("25.11.2", "25.11.0")
    assert same_release("22.5.1", "22.05.8")
    assert not same_release("25.11.2", "22.05.8")
    assert not same_release("unknown", "unknown")
