"""What `hpcsync runs` and `hpcsync show` print."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hpcsync.cli import main
from hpcsync.db.metric_store import upsert_metrics
from hpcsync.db.repository import Repository
from hpcsync.models import Job, JobState, MetricPoint, Run, RunEvent, RunStatus
from hpcsync.views import sparkline

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Repository:
    url = f"sqlite:///{tmp_path / 'views.db'}"
    monkeypatch.setenv("HPCSYNC_DATABASE__URL", url)
    monkeypatch.setenv("HPCSYNC_CONFIG", str(tmp_path / "absent-is-fine.toml"))
    (tmp_path / "absent-is-fine.toml").write_text("")
    repository = Repository.from_url(url)
    repository.ensure_schema()
    job = Job(
        job_id="77",
        job_id_raw=77,
        state=JobState.COMPLETED,
        name="train",
        submitted_at=T0,
        started_at=T0,
        ended_at=T0.replace(hour=13),
        exit_code=0,
        num_cpus=4,
        mem_mb=8000,
        num_gpus=2,
        gpu_type="a100",
    )
    run = Run(cluster="c", experiment="bert", job=job, status=RunStatus.COMPLETED, name="base")
    (saved,) = repository.save_runs([(run, True, [RunEvent(T0, None, "COMPLETED")])], T0)
    assert saved.id is not None
    points = [MetricPoint("train_loss", step, 2.0 / (step + 1), T0) for step in range(100)]
    points.append(MetricPoint("accuracy", 99, 0.91, T0))
    with repository.atomic() as connection:
        upsert_metrics(connection, saved.id, points)
    return repository


def test_sparkline_scales_and_averages_down() -> None:
    assert sparkline([1, 2, 3, 4, 5, 6, 7, 8]) == "▁▂▃▄▅▆▇█"
    assert len(sparkline(list(range(1000)), width=40)) == 40
    assert sparkline([5, 5, 5]) == "▄▄▄"
    assert sparkline([]) == ""


def test_runs_shows_allocation_gpus_and_the_latest_loss(
    database: Repository, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["runs"]) == 0
    header, line = capsys.readouterr().out.splitlines()
    assert header.split() == [
        "JOBID",
        "EXPERIMENT",
        "RUN",
        "STATUS",
        "SLURM",
        "EXIT",
        "ELAPSED",
        "CPUS",
        "MEM",
        "GPUS",
        "GPU%",
        "LOSS",
    ]
    assert line.split() == [
        "77",
        "bert",
        "base",
        "completed",
        "COMPLETED",
        "0",
        "1:00:00",
        "4",
        "8000M",
        "2xa100",
        "-",
        "0.02",
    ]


def test_runs_json_carries_the_loss(
    database: Repository, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["runs", "--json", "--experiment", "bert"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["loss"] == {"name": "train_loss", "value": pytest.approx(0.02, abs=1e-9)}
    assert main(["runs", "--json", "--state", "failed"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_show_prints_timeline_latest_metrics_and_a_sparkline(
    database: Repository, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["show", "77"]) == 0
    out = capsys.readouterr().out
    assert "new -> COMPLETED" in out
    assert "accuracy" in out and "0.91" in out
    curve = next(line for line in out.splitlines() if line.startswith("train_loss:"))
    assert "█" in curve and "2 -> 0.02 over steps 0..99" in curve
