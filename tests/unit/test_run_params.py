"""Run params on both databases: the table and its migration, the store, and manifest ingestion."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import delete, inspect, select

from hpcsync import ingest_manifest
from hpcsync.db import schema
from hpcsync.db.metric_store import load_cursors, load_metrics
from hpcsync.db.params_store import load_params, replace_params, set_seed
from hpcsync.db.repository import Repository
from hpcsync.db.tables import metadata, run_params, runs
from hpcsync.errors import StorageError
from hpcsync.ingest import LogIngester
from hpcsync.ingest_files import kind_of, manifest_files
from hpcsync.models import Job, JobState, Run, RunStatus

SUBMITTED = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
NOW = SUBMITTED + timedelta(hours=1)
SHA = "0f3c2d1e4b5a69788796a5b4c3d2e1f00f1e2d3c"


def _save_run(repository: Repository, job_id: str = "10", stdout: Path | None = None) -> Run:
    job = Job(
        job_id=job_id,
        job_id_raw=int(job_id.split("_", maxsplit=1)[0]),
        state=JobState.RUNNING,
        submitted_at=SUBMITTED,
        stdout_path=None if stdout is None else str(stdout),
        node_list="node01",
    )
    run = Run(cluster="test", experiment="params", job=job, status=RunStatus.RUNNING)
    return repository.save_runs([(run, False, [])], NOW)[0]


def _params(repository: Repository, run: Run) -> dict[str, str]:
    assert run.id is not None
    with repository.atomic() as connection:
        return load_params(connection, run.id)


def _seed(repository: Repository, run: Run) -> int | None:
    with repository.atomic() as connection:
        seed: int | None = connection.execute(
            select(runs.c.seed).where(runs.c.id == run.id)
        ).scalar_one()
    return seed


# -- the table --------------------------------------------------------------------------------


def test_migration_0004_creates_run_params_as_the_tables_say(repository: Repository) -> None:
    assert schema.current_revision(repository.engine) == schema.head_revision()
    with repository.engine.connect() as connection:
        diffs = compare_metadata(MigrationContext.configure(connection), metadata)
        columns = {c["name"] for c in inspect(connection).get_columns("run_params")}
        unique = inspect(connection).get_unique_constraints("run_params")
        keys = inspect(connection).get_foreign_keys("run_params")
    assert [diff for diff in diffs if "run_params" in repr(diff)] == []
    assert columns == {"id", "run_id", "key", "value"}
    assert [sorted(u["column_names"]) for u in unique] == [["key", "run_id"]]
    assert [(k["referred_table"], k["options"].get("ondelete")) for k in keys] == [
        ("runs", "CASCADE")
    ]


def test_migration_0004_downgrades_and_upgrades_again(repository: Repository) -> None:
    config = Config()
    config.set_main_option("script_location", schema.SCRIPT_LOCATION)
    with repository.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0003")
    assert "run_params" not in inspect(repository.engine).get_table_names()
    assert repository.ensure_schema()
    assert "run_params" in inspect(repository.engine).get_table_names()


def test_params_are_replaced_as_a_whole(repository: Repository) -> None:
    run, other = _save_run(repository, "10"), _save_run(repository, "11")
    assert run.id is not None and other.id is not None
    with repository.atomic() as connection:
        assert replace_params(connection, run.id, {"lr": "0.1", "bs": "64", "note": ""}) == 3
        assert replace_params(connection, other.id, {"lr": "0.3"}) == 1
        assert replace_params(connection, run.id, {"lr": "0.1", "bs": "64", "note": ""}) == 0
        # One changed, one added, one gone.
        assert replace_params(connection, run.id, {"lr": "0.05", "bs": "64", "wd": "1e-4"}) == 3
        assert load_params(connection, run.id) == {"bs": "64", "lr": "0.05", "wd": "1e-4"}
        assert load_params(connection, other.id) == {"lr": "0.3"}
        assert list(load_params(connection, run.id)) == ["bs", "lr", "wd"]
        assert replace_params(connection, run.id, {}) == 3
        assert load_params(connection, run.id) == {}


def test_seed_is_kept_by_later_run_updates(repository: Repository) -> None:
    run = _save_run(repository)
    assert run.id is not None
    with repository.atomic() as connection:
        set_seed(connection, run.id, 2**63 - 1)
        set_seed(connection, run.id, None)  # keeps what is there
    repository.save_runs([(run, True, [])], NOW + timedelta(minutes=1))
    assert _seed(repository, run) == 2**63 - 1


def test_params_go_with_their_run(repository: Repository) -> None:
    run = _save_run(repository)
    assert run.id is not None
    with repository.atomic() as connection:
        replace_params(connection, run.id, {"lr": "0.1"})
        connection.execute(delete(runs).where(runs.c.id == run.id))
        assert connection.execute(select(run_params)).all() == []


# -- ingestion --------------------------------------------------------------------------------


def _manifest(path: Path, **data: Any) -> None:
    data = {"version": 1, **data}
    temporary = path.with_name(".tmp")
    temporary.write_text(json.dumps(data))
    os.replace(temporary, path)


@pytest.fixture
def ingester(repository: Repository, tmp_path: Path) -> Iterator[LogIngester]:
    (tmp_path / "root").mkdir()
    made = LogIngester(
        repository,
        roots=[str(tmp_path / "root")],
        observer="polling",
        clock=lambda: NOW,
        local_timezone=UTC,
    )
    yield made
    made.close()


def test_manifest_files_are_named_beside_stdout() -> None:
    job = Job(job_id="7_3", job_id_raw=12, state=JobState.RUNNING, stdout_path="/logs/a-7_3.out")
    run = Run("c", "e", job, RunStatus.RUNNING, id=1)
    assert manifest_files(run) == [("/logs/hpcsync-7_3.run.json", "manifest")]
    assert kind_of("/logs/hpcsync-7_3.run.json") == "manifest"
    assert kind_of("/logs/hpcsync-7_3-n1.gpu.jsonl") == "gpu"
    assert kind_of("/logs/a-7_3.out") == "log"
    unknown = Job(job_id="8", job_id_raw=8, state=JobState.RUNNING, stdout_path="/l/%N/o.out")
    assert manifest_files(Run("c", "e", unknown, RunStatus.RUNNING, id=2)) == []
    default = Job(job_id="9", job_id_raw=9, state=JobState.RUNNING, work_dir="/home/u/w")
    assert manifest_files(Run("c", "e", default, RunStatus.RUNNING, id=3)) == [
        ("/home/u/w/hpcsync-9.run.json", "manifest")
    ]


def test_manifest_beside_the_log_becomes_params_and_seed(
    repository: Repository, ingester: LogIngester, tmp_path: Path
) -> None:
    log_file = tmp_path / "train-10.out"
    log_file.write_text("step=1 loss=0.5\n")
    manifest = tmp_path / "hpcsync-10.run.json"
    _manifest(manifest, params={"lr": 0.1, "bs": "64"}, git_sha=SHA, seed=1234)
    run = _save_run(repository, "10", log_file)
    ingester.track([run])
    stats = ingester.ingest()
    assert _params(repository, run) == {"bs": "64", "git_sha": SHA, "lr": "0.1", "seed": "1234"}
    assert _seed(repository, run) == 1234
    assert stats.files == 2 and stats.points == 1 and stats.failures == 0
    # Nothing changed: nothing read. The template rewrites it: read again, as a whole.
    assert ingester.ingest().files == 0
    _manifest(manifest, params={"lr": 0.2}, seed=99)
    assert ingester.ingest().files == 1
    assert _params(repository, run) == {"lr": "0.2", "seed": "99"}
    assert _seed(repository, run) == 99
    # A manifest has no stored cursor, and the log's metrics are untouched.
    with repository.atomic() as connection:
        assert list(load_cursors(connection, [run.id or 0])) == [(run.id, str(log_file))]
        assert [p.name for p in load_metrics(connection, run.id or 0)] == ["loss"]


def test_a_restarted_daemon_reads_the_manifest_again_quietly(
    repository: Repository, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log_file = tmp_path / "train-11.out"
    log_file.write_text("")
    _manifest(tmp_path / "hpcsync-11.run.json", params={"lr": 0.1}, seed=1)
    run = _save_run(repository, "11", log_file)
    caplog.set_level(logging.INFO, logger="hpcsync.ingest_manifest")
    for _ in range(2):
        ingester = LogIngester(repository, observer="polling", clock=lambda: NOW)
        ingester.track([run])
        assert ingester.ingest().files == 2
        ingester.close()
    assert _params(repository, run) == {"lr": "0.1", "seed": "1"}
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO] == [
        "job 11: run manifest read: 2 params, git unknown, seed 1"
    ]


def test_a_manifest_written_later_and_the_final_read(
    repository: Repository, ingester: LogIngester, tmp_path: Path
) -> None:
    log_file = tmp_path / "train-12.out"
    log_file.write_text("")
    run = _save_run(repository, "12", log_file)
    ingester.track([run])
    assert ingester.ingest().files == 1  # the empty log
    assert _params(repository, run) == {}
    _manifest(tmp_path / "hpcsync-12.run.json", params={"lr": "1"}, seed=5)
    ingester.finish([run])
    assert _params(repository, run) == {"lr": "1", "seed": "5"}
    assert ingester.files == []


def test_a_manifest_in_a_log_root(
    repository: Repository, ingester: LogIngester, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    _manifest(root / "hpcsync-13_2.run.json", params={"task": "2"})
    _manifest(root / "hpcsync-13.run.json", params={"wrong": "run"})
    run = _save_run(repository, "13_2", tmp_path / "elsewhere" / "x.out")
    ingester.track([run])
    ingester.ingest()
    assert _params(repository, run) == {"task": "2"}


def test_an_older_jobs_manifest_is_ignored(
    repository: Repository, ingester: LogIngester, tmp_path: Path
) -> None:
    manifest = tmp_path / "hpcsync-14.run.json"
    _manifest(manifest, params={"old": "job"})
    old = (SUBMITTED - timedelta(days=1)).timestamp()
    os.utime(manifest, (old, old))
    run = _save_run(repository, "14", tmp_path / "x-14.out")
    ingester.track([run])
    ingester.ingest()
    assert _params(repository, run) == {}


def test_a_bad_manifest_logs_one_line_and_stops_nothing(
    repository: Repository,
    ingester: LogIngester,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    bad, good = tmp_path / "b-15.out", tmp_path / "g-16.out"
    bad.write_text("step=1 loss=3\n")
    good.write_text("")
    (tmp_path / "hpcsync-15.run.json").write_text('{"params": {"lr": 0.1}, "seed": "x"')
    _manifest(tmp_path / "hpcsync-16.run.json", params={"lr": "0.3"})
    bad_run, good_run = _save_run(repository, "15", bad), _save_run(repository, "16", good)
    ingester.track([bad_run, good_run])
    stats = ingester.ingest()
    ingester.ingest()
    ingester.ingest()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("job 15: run manifest ") and "ignored: not JSON" in warnings[0]
    assert stats.failures == 0 and stats.points == 1
    assert _params(repository, good_run) == {"lr": "0.3"}
    assert _params(repository, bad_run) == {}
    # Fixed by the user: read again.
    _manifest(tmp_path / "hpcsync-15.run.json", params={"lr": "0.1"})
    ingester.ingest()
    assert _params(repository, bad_run) == {"lr": "0.1"}


def test_a_database_failure_is_retried(
    repository: Repository,
    ingester: LogIngester,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log_file = tmp_path / "t-17.out"
    log_file.write_text("")
    _manifest(tmp_path / "hpcsync-17.run.json", params={"lr": "0.1"}, seed=3)
    run = _save_run(repository, "17", log_file)

    def down(*args: object) -> int:
        raise StorageError("database error: down")

    real = ingest_manifest.replace_params
    monkeypatch.setattr(ingest_manifest, "replace_params", down)
    ingester.track([run])
    assert ingester.ingest().failures == 1
    monkeypatch.setattr(ingest_manifest, "replace_params", real)
    assert ingester.ingest().failures == 0  # retried although the file did not change
    assert _params(repository, run) == {"lr": "0.1", "seed": "3"}
