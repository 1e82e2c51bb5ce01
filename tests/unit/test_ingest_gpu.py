"""GPU sample files through the ingester: run_gpus rows with their cursor, the run's summary."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from hpcsync import ingest as ingest_module
from hpcsync.db.metric_store import RunGpu, load_cursors, load_metrics, load_run_gpus
from hpcsync.db.repository import Repository
from hpcsync.db.tables import runs
from hpcsync.errors import StorageError
from hpcsync.ingest import LogIngester
from hpcsync.ingest_gpu import sample_rows
from hpcsync.models import Job, JobState, Run, RunStatus

SUBMITTED = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
READ_AT = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
# The fake NVML's devices (tests/fake_nvml/README.md): minor 0 at 30 %, minor 1 at 71 %.
DEVICES = {0: ("GPU-00000000-0000-4000-8000-000000000000", 30.0, 3000.0)}
DEVICES[1] = ("GPU-11111111-1111-4111-8111-111111111111", 71.0, 7100.0)

MakeIngester = Callable[..., LogIngester]


@pytest.fixture
def make_ingester(repository: Repository) -> Iterator[MakeIngester]:
    made: list[LogIngester] = []

    def make(**kwargs: Any) -> LogIngester:
        kwargs = {"observer": "polling", "clock": lambda: READ_AT, "local_timezone": UTC, **kwargs}
        ingester = LogIngester(repository, **kwargs)
        made.append(ingester)
        return ingester

    yield make
    for ingester in made:
        ingester.close()


def _save_run(
    repository: Repository,
    job_id: str,
    directory: Path,
    *,
    gpus: int | None = 2,
    state: JobState = JobState.RUNNING,
    node_list: str = "node01",
) -> Run:
    stdout = directory / f"slurm-{job_id}.out"
    stdout.touch()
    job = Job(
        job_id=job_id,
        job_id_raw=int(job_id),
        state=state,
        stdout_path=str(stdout),
        stderr_path=str(stdout),
        work_dir=str(directory),
        node_list=node_list,
        num_gpus=gpus,
        submitted_at=SUBMITTED,
    )
    run = Run(cluster="test", experiment="gpu", job=job, status=RunStatus.RUNNING)
    return repository.save_runs([(run, False, [])], SUBMITTED)[0]


def _header(job_id: str, node: str, i: int, minor: int) -> str:
    uuid = DEVICES[minor][0]
    return json.dumps(
        {
            "type": "gpu",
            "time": "2026-11-22T10:00:00.000Z",
            "job_id": job_id,
            "node": node,
            "i": i,
            "minor": minor,
            "uuid": uuid,
            "name": f"Fake GPU minor{minor}",
            "driver": "999.99-fake",
        }
    )


def _sample(job_id: str, node: str, step: int, i: int, minor: int) -> str:
    uuid, util, memory = DEVICES[minor]
    return json.dumps(
        {
            "type": "sample",
            "time": f"2026-11-22T10:00:{step + 1:02d}.000Z",
            "step": step,
            "job_id": job_id,
            "node": node,
            "i": i,
            "minor": minor,
            "uuid": uuid,
            "n": 1,
            "seconds": 1.0,
            "utilization_percentage": util,
            "memory_usage_megabytes": memory,
            "memory_total_megabytes": 40000.0,
            "power_usage_watts": 150.0,
            "temperature_celsius": None,
        }
    )


def _sample_file(directory: Path, job_id: str, minors: list[int], steps: int) -> Path:
    """Write what a sampler on node01 writes for the GPUs with these minors (i in that order)."""
    path = directory / f"hpcsync-{job_id}-node01.gpu.jsonl"
    lines = [_header(job_id, "node01", i, minor) for i, minor in enumerate(minors)]
    for step in range(steps):
        lines += [_sample(job_id, "node01", step, i, minor) for i, minor in enumerate(minors)]
    with path.open("a", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def _gpus(repository: Repository, run: Run) -> list[RunGpu]:
    assert run.id is not None
    with repository.atomic() as connection:
        return load_run_gpus(connection, run.id)


def _util_mean(repository: Repository, run: Run) -> float | None:
    with repository.atomic() as connection:
        value = connection.execute(
            select(runs.c.gpu_util_mean).where(runs.c.id == run.id)
        ).scalar_one()
    return None if value is None else float(value)


def _names(repository: Repository, run: Run) -> set[str]:
    assert run.id is not None
    with repository.atomic() as connection:
        return {point.name for point in load_metrics(connection, run.id)}


def test_sample_rows_split_headers_from_samples() -> None:
    lines = [_header("5", "n1", 0, 1), _sample("5", "n1", 0, 0, 1), "not json", ""]
    rows = sample_rows(lines)
    assert [gpu.uuid for gpu in rows.gpus] == [DEVICES[1][0]]
    assert rows.gpus[0].seen_at == datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    assert {name for name, *_ in rows.points} == {
        "system/gpu_0_utilization_percentage",
        "system/gpu_0_memory_usage_megabytes",
        "system/gpu_0_memory_usage_percentage",
        "system/gpu_0_power_usage_watts",
    }


def test_headers_become_run_gpus_and_finish_writes_the_mean(
    repository: Repository, tmp_path: Path, make_ingester: MakeIngester
) -> None:
    run = _save_run(repository, "200", tmp_path)
    _sample_file(tmp_path, "200", [0, 1], steps=3)
    ingester = make_ingester()
    ingester.track([run])
    assert ingester.ingest().points == 2 * 3 * 4
    assert [(g.node, g.i, g.minor, g.uuid, g.name) for g in _gpus(repository, run)] == [
        ("node01", 0, 0, DEVICES[0][0], "Fake GPU minor0"),
        ("node01", 1, 1, DEVICES[1][0], "Fake GPU minor1"),
    ]
    assert _util_mean(repository, run) is None  # written when the run ends

    ingester.finish([run])
    assert _util_mean(repository, run) == pytest.approx((30.0 + 71.0) / 2)


def test_a_restarted_sampler_updates_its_gpus_without_doubling(
    repository: Repository, tmp_path: Path, make_ingester: MakeIngester
) -> None:
    run = _save_run(repository, "201", tmp_path, gpus=1)
    path = _sample_file(tmp_path, "201", [0], steps=2)
    ingester = make_ingester()
    ingester.track([run])
    ingester.ingest()
    # The restarted sampler appends its header again and continues after step 1.
    with path.open("a", encoding="utf-8") as handle:
        handle.write(_header("201", "node01", 0, 0) + "\n")
        handle.write(_sample("201", "node01", 2, 0, 0) + "\n")
    ingester.ingest()
    assert len(_gpus(repository, run)) == 1
    ingester.finish([run])
    assert _util_mean(repository, run) == 30.0


def test_run_gpus_commit_with_the_cursor(
    repository: Repository,
    tmp_path: Path,
    make_ingester: MakeIngester,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = _save_run(repository, "202", tmp_path)
    _sample_file(tmp_path, "202", [1], steps=1)
    real_save = ingest_module.save_cursor  # type: ignore[attr-defined]

    def killed(*args: object, **kwargs: object) -> None:
        real_save(*args, **kwargs)  # type: ignore[arg-type]
        raise KeyboardInterrupt("killed before commit")

    monkeypatch.setattr(ingest_module, "save_cursor", killed)
    first = make_ingester()
    first.track([run])
    with pytest.raises(KeyboardInterrupt):
        first.ingest()
    assert _gpus(repository, run) == []
    assert _names(repository, run) == set()
    assert run.id is not None
    with repository.atomic() as connection:
        assert load_cursors(connection, [run.id]) == {}

    monkeypatch.setattr(ingest_module, "save_cursor", real_save)
    restarted = make_ingester()
    restarted.track([run])
    restarted.ingest()
    assert [gpu.minor for gpu in _gpus(repository, run)] == [1]
    assert "system/gpu_0_utilization_percentage" in _names(repository, run)


def test_the_summary_waits_for_a_file_that_failed(
    repository: Repository,
    tmp_path: Path,
    make_ingester: MakeIngester,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = _save_run(repository, "203", tmp_path, gpus=1)
    _sample_file(tmp_path, "203", [1], steps=2)
    ingester = make_ingester()
    real_upsert = ingest_module.upsert_rows  # type: ignore[attr-defined]

    def down(*_args: object, **_kwargs: object) -> int:
        raise StorageError("database unavailable")

    monkeypatch.setattr(ingest_module, "upsert_rows", down)
    with pytest.raises(StorageError):
        ingester.finish([run])
    assert _util_mean(repository, run) is None

    monkeypatch.setattr(ingest_module, "upsert_rows", real_upsert)
    ingester.ingest()  # the retry reads the files, then writes the summary
    assert _util_mean(repository, run) == 71.0


def test_cpu_only_and_no_nvml_runs_end_without_gpu_rows(
    repository: Repository, tmp_path: Path, make_ingester: MakeIngester
) -> None:
    cpu_only = _save_run(repository, "204", tmp_path, gpus=None)
    no_nvml = _save_run(repository, "205", tmp_path, gpus=1)  # the sampler wrote no file
    (tmp_path / "slurm-204.out").write_text("step=1 loss=0.5\n")
    ingester = make_ingester()
    ingester.track([cpu_only, no_nvml])
    ingester.ingest()
    stats = ingester.finish([cpu_only, no_nvml])
    assert stats.failures == 0
    for run in (cpu_only, no_nvml):
        assert _gpus(repository, run) == []
        assert _util_mean(repository, run) is None
        assert not any(name.startswith("system/") for name in _names(repository, run))
    assert _names(repository, cpu_only) == {"loss"}


def test_saving_the_run_again_keeps_its_gpu_summary(
    repository: Repository, tmp_path: Path, make_ingester: MakeIngester
) -> None:
    run = _save_run(repository, "206", tmp_path, gpus=1)
    _sample_file(tmp_path, "206", [0], steps=2)
    make_ingester().finish([run])
    assert _util_mean(repository, run) == 30.0
    repository.save_runs([(run, True, [])], READ_AT)  # the tracker's final record
    assert _util_mean(repository, run) == 30.0
