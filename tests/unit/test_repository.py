"""The tracking database on SQLite and PostgreSQL: schema, upserts, events and views."""

from __future__ import annotations

import logging
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import inspect

from hpcsync.db import schema
from hpcsync.db.queries import RunFilter
from hpcsync.db.repository import Repository, create_db_engine, masked_url
from hpcsync.errors import ConfigError, StorageError
from hpcsync.models import Job, JobState, Run, RunEvent, RunStatus

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def make_run(job_id: str = "7", state: JobState = JobState.PENDING, **fields: object) -> Run:
    job = Job(
        job_id=job_id,
        job_id_raw=int(job_id.split("_", maxsplit=1)[0]),
        state=state,
        name="train",
        user_name="ana",
        submitted_at=T0,
        num_cpus=2,
        mem_mb=200,
        num_gpus=1,
        gpu_type="a100",
        restarts=0,
        **fields,  # type: ignore[arg-type]
    )
    status = {JobState.PENDING: RunStatus.PENDING, JobState.COMPLETED: RunStatus.COMPLETED}.get(
        state, RunStatus.RUNNING
    )
    return Run(cluster="hpc", experiment="resnet", job=job, status=status, tags={"a": ""})


def test_schema_has_the_contract_tables_and_columns(repository: Repository) -> None:
    inspector = inspect(repository.engine)
    tables = set(inspector.get_table_names())
    assert {"experiments", "runs", "metrics", "run_events"} <= tables
    columns = {column["name"] for column in inspector.get_columns("runs")}
    contract = [
        "id",
        "experiment_id",
        "started_at",
        "ended_at",
        "status",
        "seed",
        "cluster",
        "slurm_job_id",
        "slurm_job_id_raw",
        "array_job_id",
        "array_task_id",
        "slurm_state",
        "exit_code",
        "user_name",
        "account",
        "partition",
        "node_list",
        "num_nodes",
        "num_cpus",
        "mem_mb",
        "num_gpus",
        "gpu_type",
        "submitted_at",
        "work_dir",
        "stdout_path",
        "stderr_path",
        "restarts",
        "max_rss_mb",
        "cpu_efficiency",
        "gpu_util_mean",
    ]
    assert set(contract) <= columns
    assert {c["name"] for c in inspector.get_columns("experiments")} >= {
        "id",
        "name",
        "owner",
        "description",
        "created_at",
        "status",
    }
    assert {c["name"] for c in inspector.get_columns("metrics")} >= {
        "id",
        "run_id",
        "name",
        "step",
        "value",
        "timestamp",
    }
    assert {c["name"] for c in inspector.get_columns("run_events")} >= {
        "id",
        "run_id",
        "at",
        "from_state",
        "to_state",
        "reason",
    }


def test_schema_upgrade_is_idempotent(repository: Repository) -> None:
    assert repository.ensure_schema() is False
    assert schema.current_revision(repository.engine) == schema.head_revision()


def test_save_inserts_then_updates_one_row_with_events(repository: Repository) -> None:
    event = RunEvent(T0, None, "PENDING")
    (saved,) = repository.save_runs([(make_run(), False, [event])], T0)
    assert saved.id is not None
    running = Run(
        id=saved.id,
        cluster="hpc",
        experiment="resnet",
        job=Job(**{**_fields(saved.job), "state": JobState.RUNNING, "started_at": T0}),
        status=RunStatus.RUNNING,
        tags={"a": ""},
    )
    repository.save_runs([(running, False, [RunEvent(T0, "PENDING", "RUNNING", "x")])], T0)
    assert repository.count_runs() == 1
    (live,) = repository.live_runs("hpc")
    assert live == running
    assert [(e.from_state, e.to_state) for e in repository.events_for(saved.id)] == [
        (None, "PENDING"),
        ("PENDING", "RUNNING"),
    ]


def test_saving_a_new_run_twice_does_not_duplicate_it(repository: Repository) -> None:
    first = repository.save_runs([(make_run(), False, [])], T0)[0]
    second = repository.save_runs([(make_run(), False, [])], T0)[0]
    assert first.id == second.id and repository.count_runs() == 1


def test_a_reused_job_id_with_another_submit_time_is_a_second_row(repository: Repository) -> None:
    repository.save_runs([(make_run(), True, [])], T0)
    later = make_run()
    later = Run(
        cluster=later.cluster,
        experiment=later.experiment,
        job=Job(**{**_fields(later.job), "submitted_at": T0 + timedelta(days=1)}),
        status=later.status,
    )
    repository.save_runs([(later, False, [])], T0)
    assert repository.count_runs() == 2
    found = repository.runs_for_jobs("hpc", ["7"])
    assert [run.job.submitted_at for run in found] == [T0 + timedelta(days=1), T0]


def test_final_runs_are_not_live(repository: Repository) -> None:
    repository.save_runs([(make_run("8", JobState.COMPLETED, exit_code=0), True, [])], T0)
    repository.save_runs([(make_run("9"), False, [])], T0)
    assert [run.job.job_id for run in repository.live_runs("hpc")] == ["9"]
    assert repository.live_runs("other") == []


def test_times_come_back_as_utc(repository: Repository) -> None:
    local = datetime(2026, 11, 22, 13, 0, tzinfo=UTC).astimezone()
    repository.save_runs([(make_run(started_at=local), False, [])], T0)
    (run,) = repository.live_runs("hpc")
    assert run.job.started_at == local and run.job.started_at.tzinfo is UTC


def test_cpu_efficiency_is_derived_from_cpu_time(repository: Repository) -> None:
    run = make_run("5", JobState.COMPLETED, elapsed_seconds=100, total_cpu_seconds=50.0)
    repository.save_runs([(run, True, [])], T0)
    row = repository.find_run("5")
    assert row is not None and row["cpu_efficiency"] == pytest.approx(0.25)


def test_views_filter_and_find_by_job_id(repository: Repository) -> None:
    repository.save_runs(
        [(make_run("10_0"), False, []), (make_run("11", JobState.COMPLETED), True, [])], T0
    )
    assert [r["slurm_job_id"] for r in repository.list_runs(RunFilter(status="completed"))] == [
        "11"
    ]
    assert len(repository.list_runs(RunFilter(experiment="resnet"))) == 2
    assert repository.list_runs(RunFilter(user="bob")) == []
    found = repository.find_run("10_0")
    assert found is not None and found["experiment"] == "resnet" and found["events"] == []
    assert found["tags"] == {"a": ""}
    assert repository.find_run("999") is None


def test_daemon_state_round_trips(repository: Repository) -> None:
    assert repository.get_state("hpc", "last_seen") is None
    repository.set_state("hpc", "last_seen", "a")
    repository.set_state("hpc", "last_seen", "b")
    assert repository.get_state("hpc", "last_seen") == "b"


def test_an_unreachable_database_is_a_storage_error() -> None:
    repo = Repository.from_url("postgresql://nobody@127.0.0.1:1/none", connect_timeout=1)
    with pytest.raises(StorageError, match=r"database error|schema"):
        repo.live_runs("hpc")


def test_a_bad_url_is_a_config_error_and_passwords_are_masked() -> None:
    with pytest.raises(ConfigError):
        create_db_engine("not a url")
    assert "secret" not in masked_url("postgresql://u:secret@h/db")


def _fields(job: Job) -> dict[str, object]:
    return {name: getattr(job, name) for name in job.__dataclass_fields__}


def test_find_run_shows_the_latest_value_of_each_metric(repository: Repository) -> None:
    from hpcsync.db.metric_store import upsert_metrics
    from hpcsync.models import MetricPoint

    (run,) = repository.save_runs([(make_run("12"), False, [])], T0)
    assert run.id is not None
    with repository.atomic() as connection:
        upsert_metrics(
            connection,
            run.id,
            [
                MetricPoint("loss", 1, 0.9, T0),
                MetricPoint("loss", 2, 0.5, T0),
                MetricPoint("acc", 1, 0.7, T0),
            ],
        )
    found = repository.find_run("12")
    assert found is not None
    assert {name: (p["step"], p["value"]) for name, p in found["metrics"].items()} == {
        "acc": (1, 0.7),
        "loss": (2, 0.5),
    }


def test_an_update_without_usage_keeps_the_stored_usage(repository: Repository) -> None:
    (run,) = repository.save_runs(
        [(make_run("13", JobState.RUNNING, max_rss_mb=150.0), False, [])], T0
    )
    repository.save_runs([(Run(**{**_run_fields(run), "job": make_run("13").job}), False, [])], T0)
    found = repository.find_run("13")
    assert found is not None and found["max_rss_mb"] == 150.0


def _run_fields(run: Run) -> dict[str, object]:
    return {name: getattr(run, name) for name in run.__dataclass_fields__}


def test_the_head_revision_is_the_scripts_and_alembic_loads_only_to_migrate(
    repository: Repository, tmp_path: Path
) -> None:
    from alembic.runtime.migration import MigrationContext

    assert schema.head_revision() == schema.script_head_revision()
    with repository.engine.connect() as connection:
        by_alembic = MigrationContext.configure(connection).get_current_revision()
    assert schema.current_revision(repository.engine) == by_alembic == schema.head_revision()

    def ensure(name: str, argument: str) -> list[str]:
        url = f"sqlite:///{tmp_path / name}"
        program = (
            "import sys\n"
            "from hpcsync.db.repository import Repository\n"
            f"repository = Repository.from_url({url!r})\n"
            f"print(repository.ensure_schema({argument}), 'alembic' in sys.modules)\n"
        )
        run = subprocess.run(
            [sys.executable, "-c", program], check=False, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        return run.stdout.split()

    assert ensure("here.db", "") == ["True", "True"]
    assert ensure("here.db", "") == ["False", "False"]  # at the head: Alembic is not imported
    assert ensure("child.db", "in_child=True") == ["True", "False"]  # migrated by a child
    assert ensure("child.db", "") == ["False", "False"]
    child = Repository.from_url(f"sqlite:///{tmp_path / 'child.db'}")
    assert schema.current_revision(child.engine) == schema.head_revision()
    child.dispose()


def test_a_migration_that_fails_in_the_child_raises_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="schema upgrade failed"):
        schema.upgrade_in_child(f"sqlite:///{tmp_path / 'missing' / 'x.db'}")


def test_without_a_child_process_the_daemon_migrates_in_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_semaphores(_method: str) -> None:
        raise OSError("[Errno 38] Function not implemented: /dev/shm")

    monkeypatch.setattr(schema.multiprocessing, "get_context", no_semaphores)
    repository = Repository.from_url(f"sqlite:///{tmp_path / 'here.db'}")
    with caplog.at_level(logging.WARNING, logger="hpcsync.db.repository"):
        assert repository.ensure_schema(in_child=True)
    assert schema.current_revision(repository.engine) == schema.head_revision()
    assert "cannot migrate from a child process ([Errno 38]" in caplog.text
    repository.dispose()
