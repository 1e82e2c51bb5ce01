"""Log ingestion into both databases: exactly once through crashes, truncation and partial lines."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from hpcsync import ingest as ingest_module
from hpcsync.db.metric_store import load_cursors, load_metrics
from hpcsync.db.repository import Repository
from hpcsync.errors import StorageError
from hpcsync.ingest import LogIngester, run_files
from hpcsync.models import Job, JobState, MetricPoint, Run, RunStatus

SUBMITTED = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
READ_AT = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
NOISE = (
    "Loading data from /scratch/data ...\n"
    "\r  0%|          | 0/100 [00:00<?, ?it/s]\r 50%|#####     | 50/100 [00:01<00:01, 40.1it/s]"
    "\r100%|##########| 100/100 [00:02<00:00, 41.0it/s]\n"
    "\x1b[32mINFO\x1b[0m model has 1.2M parameters\n"
    "Saving checkpoints/epoch=1-step=40.pt\n"
    "optimizer: StepLR step_size=30 gamma=0.1\n"
    "UserWarning: loss=nan detected in batch 3\n"
)


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = READ_AT

    def __call__(self) -> datetime:
        return self.now


def _save_run(
    repository: Repository,
    job_id: str,
    stdout: Path,
    *,
    stderr: Path | None = None,
    state: JobState = JobState.RUNNING,
) -> Run:
    raw = int(job_id.split("_", maxsplit=1)[0])
    job = Job(
        job_id=job_id,
        job_id_raw=raw,
        state=state,
        stdout_path=str(stdout),
        stderr_path=str(stderr or stdout),
        work_dir=str(stdout.parent),
        node_list="node01",
        submitted_at=SUBMITTED,
    )
    run = Run(cluster="test", experiment="exp", job=job, status=RunStatus.RUNNING)
    return repository.save_runs([(run, False, [])], SUBMITTED)[0]


def _points(repository: Repository, run: Run, name: str | None = None) -> list[MetricPoint]:
    assert run.id is not None
    with repository.atomic() as connection:
        return load_metrics(connection, run.id, name)


def _values(repository: Repository, run: Run, name: str) -> dict[int, float]:
    return {p.step: p.value for p in _points(repository, run, name)}


def _write(path: Path, text: str, mode: str = "a") -> None:
    with path.open(mode, encoding="utf-8") as handle:
        handle.write(text)


@pytest.fixture
def clock() -> Clock:
    return Clock()


MakeIngester = Callable[..., LogIngester]


@pytest.fixture
def make_ingester(repository: Repository, clock: Clock) -> Iterator[MakeIngester]:
    made: list[LogIngester] = []

    def make(**kwargs: Any) -> LogIngester:
        kwargs = {"observer": "polling", "clock": clock, "local_timezone": UTC, **kwargs}
        ingester = LogIngester(repository, **kwargs)
        made.append(ingester)
        return ingester

    yield make
    for ingester in made:
        ingester.close()


def test_key_value_and_json_lines_among_noise(
    repository: Repository, tmp_path: Path, make_ingester: MakeIngester
) -> None:
    log_file = tmp_path / "slurm-100.out"
    _write(log_file, NOISE)
    for step in range(1, 6):
        _write(log_file, f"step={step} loss={1 / step:.4f} acc={step / 10}\n")
        _write(log_file, json.dumps({"step": step, "val_loss": step * 0.25}) + "\n")
    run = _save_run(repository, "100", log_file)
    ingester = make_ingester()
    ingester.track([run])
    stats = ingester.ingest()
    assert stats.points == 15
    assert _values(repository, run, "loss") == {s: round(1 / s, 4) for s in range(1, 6)}
    assert _values(repository, run, "acc") == {s: s / 10 for s in range(1, 6)}
    assert _values(repository, run, "val_loss") == {s: s * 0.25 for s in range(1, 6)}
    assert {p.name for p in _points(repository, run)} == {"loss", "acc", "val_loss"}

    assert ingester.ingest().points == 0
    assert make_ingester().finish([run]).points == 0
    assert len(_points(repository, run)) == 15


def test_partial_line_is_read_once_when_complete(
    repository: Repository, tmp_path: Path, make_ingester: MakeIngester
) -> None:
    log_file = tmp_path / "slurm-101.out"
    _write(log_file, "step=1 loss=0.5\nstep=2 lo")
    run = _save_run(repository, "101", log_file)
    ingester = make_ingester()
    ingester.track([run])
    ingester.ingest()
    assert _values(repository, run, "loss") == {1: 0.5}
    _write(log_file, "ss=0.25\n")
    ingester.ingest()
    assert _values(repository, run, "loss") == {1: 0.5, 2: 0.25}
    assert ingester.ingest().points == 0


def test_interruption_between_read_and_commit_rereads_the_same_keys(
    repository: Repository,
    tmp_path: Path,
    make_ingester: MakeIngester,
    *,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    clock: Clock,
) -> None:
    log_file = tmp_path / "slurm-102.out"
    _write(log_file, "loss=0.9\nloss=0.8\nloss=0.7\n")
    run = _save_run(repository, "102", log_file)
    first = make_ingester()
    first.track([run])
    first.ingest()
    assert _values(repository, run, "loss") == {0: 0.9, 1: 0.8, 2: 0.7}

    _write(log_file, 'loss=0.6\n{"loss": 0.5}\nstep=9 acc=0.4\n')
    real_save = ingest_module.save_cursor  # type: ignore[attr-defined]

    def killed(*args: object, **kwargs: object) -> None:
        real_save(*args, **kwargs)  # type: ignore[arg-type]
        raise KeyboardInterrupt("killed before commit")

    monkeypatch.setattr(ingest_module, "save_cursor", killed)
    with pytest.raises(KeyboardInterrupt):
        first.ingest()
    assert len(_points(repository, run)) == 3

    monkeypatch.setattr(ingest_module, "save_cursor", real_save)
    restarted = make_ingester()  # a new process: only the database remembers
    restarted.track([run])
    restarted.ingest()
    assert _values(repository, run, "loss") == {0: 0.9, 1: 0.8, 2: 0.7, 3: 0.6, 4: 0.5}
    assert _values(repository, run, "acc") == {9: 0.4}
    assert restarted.ingest().points == 0

    # A failure the daemon survives: logged once, the file retried next pass.
    _write(log_file, "loss=0.4\n")

    def broken(*_args: object, **_kwargs: object) -> None:
        raise OSError("disk went away")

    monkeypatch.setattr(ingest_module, "save_cursor", broken)
    with caplog.at_level(logging.WARNING, logger="hpcsync.ingest"):
        stats = restarted.ingest()
    assert stats.failures == 1
    assert any("slurm-102.out" in record.getMessage() for record in caplog.records)
    monkeypatch.setattr(ingest_module, "save_cursor", real_save)
    assert restarted.ingest().points == 0  # the retry waits ...
    clock.now += timedelta(seconds=ingest_module.RETRY_FIRST_SECONDS)
    assert restarted.ingest().points == 1  # ... its turn
    assert _values(repository, run, "loss")[5] == 0.4
    assert len(_points(repository, run)) == 7


def test_truncation_by_a_requeue_loses_nothing_and_doubles_nothing(
    repository: Repository, tmp_path: Path, make_ingester: MakeIngester
) -> None:
    log_file = tmp_path / "slurm-103.out"
    first_attempt = "".join(f"step={s} loss={10 - s}\nacc={s / 10}\n" for s in range(4))
    _write(log_file, first_attempt)
    run = _save_run(repository, "103", log_file)
    ingester = make_ingester()
    ingester.track([run])
    ingester.ingest()
    assert len(_points(repository, run)) == 8

    # The restart truncates the log and writes it again from the top, further this time.
    second_attempt = "".join(f"step={s} loss={20 - s}\nacc={s / 5}\n" for s in range(6))
    _write(log_file, second_attempt[:30], mode="w")
    stats = ingester.ingest()
    _write(log_file, second_attempt[30:])
    stats.add(ingester.ingest())
    assert stats.restarts == 1
    assert _values(repository, run, "loss") == {s: 20 - s for s in range(6)}
    assert _values(repository, run, "acc") == {s: s / 5 for s in range(6)}
    assert len(_points(repository, run)) == 12
    assert ingester.finish([run]).points == 0
    assert len(_points(repository, run)) == 12


def test_rewrite_longer_than_the_old_offset_between_two_reads(
    repository: Repository, tmp_path: Path, make_ingester: MakeIngester
) -> None:
    log_file = tmp_path / "slurm-104.out"
    _write(log_file, "loss=5\nloss=4\n")
    run = _save_run(repository, "104", log_file)
    ingester = make_ingester()
    ingester.track([run])
    ingester.ingest()
    _write(log_file, "restart\nloss=3\nloss=2\nloss=1\n", mode="w")
    assert ingester.ingest().restarts == 1
    assert _values(repository, run, "loss") == {0: 3, 1: 2, 2: 1}


def test_files_under_roots_and_decoys(
    repository: Repository, tmp_path: Path, make_ingester: MakeIngester
) -> None:
    root = tmp_path / "logs"
    root.mkdir()
    stdout = root / "slurm-105.out"  # also found by the root scan: read once
    _write(stdout, "step=1 loss=1\n")
    _write(root / "train-105.log", "step=1 val_acc=0.5\n")
    _write(root / "slurm-1050.out", "step=1 decoy=1 loss=9\n")
    _write(root / "slurm-105_2.out", "step=1 decoy=2 loss=9\n")
    _write(root / "model-105.pt", "step=1 decoy=3 loss=9\n")
    (root / "sub").mkdir()
    _write(root / "sub" / "slurm-105.out", "step=1 decoy=4 loss=9\n")
    stale = root / "notes-105.txt"
    _write(stale, "step=1 decoy=5 loss=9\n")
    old = SUBMITTED.timestamp() - 86400
    os.utime(stale, (old, old))
    run = _save_run(repository, "105", stdout)
    ingester = make_ingester(roots=[str(root)])
    ingester.track([run])
    ingester.ingest()
    paths = sorted(os.path.basename(path) for _, path, _ in ingester.files)
    assert "slurm-105.out" in paths and "train-105.log" in paths
    assert not {"slurm-1050.out", "slurm-105_2.out", "model-105.pt", "notes-105.txt"} & set(paths)
    assert _values(repository, run, "loss") == {1: 1.0}
    assert _values(repository, run, "val_acc") == {1: 0.5}
    assert _points(repository, run, "decoy") == []


def test_stdout_and_stderr_are_both_read_once_each(
    repository: Repository, tmp_path: Path, make_ingester: MakeIngester
) -> None:
    out, err = tmp_path / "job-106.out", tmp_path / "job-106.err"
    _write(out, "step=1 loss=1\n")
    _write(err, "step=1 grad_norm=3\n")
    run = _save_run(repository, "106", out, stderr=err)
    ingester = make_ingester()
    ingester.track([run])
    ingester.ingest()
    assert _values(repository, run, "loss") == {1: 1.0}
    assert _values(repository, run, "grad_norm") == {1: 3.0}
    log_files = [path for _, path, kind in ingester.files if kind == "log"]
    assert sorted(log_files) == sorted([os.path.realpath(out), os.path.realpath(err)])


def test_gpu_sample_files(
    repository: Repository, tmp_path: Path, make_ingester: MakeIngester
) -> None:
    stdout = tmp_path / "slurm-107.out"
    _write(stdout, "")
    samples = tmp_path / "hpcsync-107-node01.gpu.jsonl"
    header: dict[str, object] = {
        "type": "gpu",
        "time": "2026-11-22T10:00:00Z",
        "job_id": "107",
        "node": "node01",
    }
    header |= {"i": 0, "minor": 1, "uuid": "GPU-1", "name": "A100"}
    lines = [json.dumps(header)]
    for step in range(3):
        lines.append(
            json.dumps(
                {
                    "type": "sample",
                    "time": f"2026-11-22T10:00:0{step + 1}Z",
                    "step": step,
                    "job_id": "107",
                    "node": "node01",
                    "i": 0,
                    "minor": 1,
                    "uuid": "GPU-1",
                    "n": 2,
                    "seconds": 1.0,
                    "utilization_percentage": 50.0 + step,
                    "memory_usage_megabytes": 1000.0,
                    "memory_total_megabytes": 4000.0,
                    "power_usage_watts": None,
                }
            )
        )
    _write(samples, "\n".join(lines) + "\n" + lines[1][:20])  # a partial last line
    run = _save_run(repository, "107", stdout)
    ingester = make_ingester()
    ingester.track([run])
    ingester.ingest()
    util = _points(repository, run, "system/gpu_0_utilization_percentage")
    assert [(p.step, p.value) for p in util] == [(0, 50.0), (1, 51.0), (2, 52.0)]
    assert util[0].timestamp == datetime(2026, 11, 22, 10, 0, 1, tzinfo=UTC)
    assert _values(repository, run, "system/gpu_0_memory_usage_percentage") == {
        s: 25.0 for s in range(3)
    }
    assert _points(repository, run, "system/gpu_0_power_usage_watts") == []


def test_timestamps_from_lines_and_from_the_clock(
    repository: Repository, tmp_path: Path, make_ingester: MakeIngester, clock: Clock
) -> None:
    log_file = tmp_path / "slurm-108.out"
    _write(log_file, "2026-11-22 10:00:01 step=1 loss=0.5\n")
    _write(log_file, '{"step": 2, "loss": 0.4, "time": "2026-11-22T10:00:02+01:00"}\n')
    _write(log_file, "step=3 loss=0.3\n")
    run = _save_run(repository, "108", log_file)
    ingester = make_ingester(local_timezone=timezone(timedelta(hours=-5)))
    ingester.track([run])
    ingester.ingest()
    stamps = {p.step: p.timestamp for p in _points(repository, run, "loss")}
    assert stamps == {
        1: datetime(2026, 11, 22, 15, 0, 1, tzinfo=UTC),
        2: datetime(2026, 11, 22, 9, 0, 2, tzinfo=UTC),
        3: clock.now,
    }


def test_finish_reads_the_partial_last_line_and_forgets_the_run(
    repository: Repository, tmp_path: Path, make_ingester: MakeIngester
) -> None:
    log_file = tmp_path / "slurm-109.out"
    _write(log_file, "step=1 loss=0.5\nstep=2 loss=0.25")
    run = _save_run(repository, "109", log_file)
    ingester = make_ingester()
    ingester.track([run])
    ingester.ingest()
    assert _values(repository, run, "loss") == {1: 0.5}
    ingester.finish([run])
    assert _values(repository, run, "loss") == {1: 0.5, 2: 0.25}
    assert ingester.files == []
    assert ingester.watcher.paths == set()


def test_a_job_that_ended_unseen_is_read_at_its_end(
    repository: Repository, tmp_path: Path, make_ingester: MakeIngester
) -> None:
    log_file = tmp_path / "slurm-110.out"
    _write(log_file, "step=1 loss=0.5\n")
    run = _save_run(repository, "110", log_file, state=JobState.COMPLETED)
    ingester = make_ingester()
    stats = ingester.follow(live=[], ended=[run])
    assert stats.points == 1 and ingester.files == []


def test_follow_tracks_live_runs_and_finishes_those_that_left(
    repository: Repository, tmp_path: Path, make_ingester: MakeIngester
) -> None:
    running, pending = tmp_path / "slurm-111.out", tmp_path / "slurm-112.out"
    _write(running, "step=1 loss=1\n")
    run = _save_run(repository, "111", running)
    waiting = _save_run(repository, "112", pending, state=JobState.PENDING)
    ingester = make_ingester()
    ingester.follow([run, waiting])
    assert {path for _, path, _ in ingester.files if path.endswith(".out")} == {
        os.path.realpath(running)
    }
    _write(running, "step=2 loss=0.5\npartial=")
    ingester.follow([waiting])  # run 111 left the live set: its final read
    assert _values(repository, run, "loss") == {1: 1.0, 2: 0.5}
    assert all(run_id != run.id for run_id, _, _ in ingester.files)


def test_one_failing_file_never_stops_the_others(
    repository: Repository,
    tmp_path: Path,
    make_ingester: MakeIngester,
    caplog: pytest.LogCaptureFixture,
    clock: Clock,
) -> None:
    broken = tmp_path / "slurm-113.out"
    broken.mkdir()  # opens, but every read fails
    good = tmp_path / "slurm-114.out"
    _write(good, "step=1 loss=1\n")
    bad_run = _save_run(repository, "113", broken)
    good_run = _save_run(repository, "114", good)
    ingester = make_ingester()
    ingester.track([bad_run, good_run])
    with caplog.at_level(logging.WARNING, logger="hpcsync.ingest"):
        stats = ingester.ingest()
    assert stats.failures == 1
    assert _values(repository, good_run, "loss") == {1: 1.0}
    assert len([r for r in caplog.records if "slurm-113.out" in r.getMessage()]) == 1
    caplog.clear()
    waits = []
    with caplog.at_level(logging.WARNING, logger="hpcsync.ingest"):
        for _ in range(7):
            assert ingester.ingest().failures == 0  # not retried on every tick
            wait = 0
            while not ingester.ingest().failures:  # retried, logged only once
                clock.now += timedelta(seconds=1)
                wait += 1
            waits.append(wait)
    assert caplog.records == []
    assert waits == [10, 20, 40, 80, 160, 300, 300]


def test_database_down_is_raised(
    repository: Repository,
    tmp_path: Path,
    make_ingester: MakeIngester,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log_file = tmp_path / "slurm-115.out"
    _write(log_file, "step=1 loss=1\n")
    run = _save_run(repository, "115", log_file)
    ingester = make_ingester()
    ingester.track([run])

    def down(*_args: object, **_kwargs: object) -> int:
        raise StorageError("database error: connection refused")

    monkeypatch.setattr(ingest_module, "upsert_rows", down)
    with pytest.raises(StorageError):
        ingester.ingest()
    monkeypatch.undo()
    assert ingester.ingest().points == 1


def test_step_counters_survive_a_restart_of_the_daemon(
    repository: Repository, tmp_path: Path, make_ingester: MakeIngester
) -> None:
    log_file = tmp_path / "slurm-116.out"
    _write(log_file, "loss=3\nloss=2\n")
    run = _save_run(repository, "116", log_file)
    first = make_ingester()
    first.track([run])
    first.ingest()
    first.close()
    _write(log_file, "loss=1\n")
    second = make_ingester()
    second.track([run])
    second.ingest()
    assert _values(repository, run, "loss") == {0: 3, 1: 2, 2: 1}
    assert run.id is not None
    with repository.atomic() as connection:
        cursors = load_cursors(connection, [run.id])
    stored = cursors[(run.id, os.path.realpath(log_file))]
    assert stored.counters == {"loss": 3}
    assert stored.offset == log_file.stat().st_size


def test_over_long_lines_are_counted(
    repository: Repository, tmp_path: Path, make_ingester: MakeIngester
) -> None:
    log_file = tmp_path / "slurm-117.out"
    _write(log_file, "step=1 loss=1\n" + "x" * 100_000 + "\nstep=2 loss=2\n")
    run = _save_run(repository, "117", log_file)
    ingester = make_ingester(max_line_bytes=1024)
    ingester.track([run])
    stats = ingester.ingest()
    assert stats.skipped_lines == 1 and stats.points == 2


def test_run_files_names_outputs_and_sample_files(tmp_path: Path) -> None:
    job = Job(
        job_id="7_3",
        job_id_raw=12,
        state=JobState.RUNNING,
        stdout_path="/logs/a-7_3.out",
        stderr_path="/logs/a-7_3.err",
        node_list="gpu[01-02]",
    )
    run = Run(cluster="c", experiment="e", job=job, status=RunStatus.RUNNING, id=1)
    assert run_files(run) == [
        ("/logs/a-7_3.out", "log"),
        ("/logs/a-7_3.err", "log"),
        ("/logs/hpcsync-7_3-gpu01.gpu.jsonl", "gpu"),
        ("/logs/hpcsync-7_3-gpu02.gpu.jsonl", "gpu"),
    ]
    default = Job(job_id="9", job_id_raw=9, state=JobState.RUNNING, work_dir="/home/u/w")
    assert run_files(Run("c", "e", default, RunStatus.RUNNING, id=2)) == [
        ("/home/u/w/slurm-9.out", "log")
    ]


def test_roots_are_listed_again_after_the_scan_interval(
    repository: Repository, tmp_path: Path, make_ingester: MakeIngester, clock: Clock
) -> None:
    root = tmp_path / "logs"
    root.mkdir()
    stdout = tmp_path / "slurm-118.out"
    _write(stdout, "")
    run = _save_run(repository, "118", stdout)
    ingester = make_ingester(roots=[str(root)], root_scan_seconds=60)
    ingester.follow([run])
    _write(root / "metrics-118.jsonl", '{"step": 3, "loss": 0.125}\n')
    ingester.follow([run])
    assert _points(repository, run) == []  # not listed again yet
    clock.now += timedelta(seconds=61)
    ingester.follow([run])
    assert _values(repository, run, "loss") == {3: 0.125}


def test_a_line_the_parser_cannot_handle_is_skipped(
    repository: Repository,
    tmp_path: Path,
    make_ingester: MakeIngester,
    caplog: pytest.LogCaptureFixture,
) -> None:
    log_file = tmp_path / "slurm-119.out"
    _write(log_file, "step=1 loss=1\nstep=2 explode=1\nstep=3 loss=3\n")
    run = _save_run(repository, "119", log_file)
    ingester = make_ingester()
    real_parse = ingester.parser.parse

    def fragile(line: str, state: Any) -> Any:
        if "explode" in line:
            raise RuntimeError("parser bug")
        return real_parse(line, state)

    ingester.parser.parse = fragile  # type: ignore[method-assign]
    ingester.track([run])
    with caplog.at_level(logging.WARNING, logger="hpcsync.ingest"):
        stats = ingester.ingest()
    assert stats.failures == 0
    assert _values(repository, run, "loss") == {1: 1.0, 3: 3.0}
    assert "parser failed on 1 lines" in caplog.text


def test_requeued_run_waiting_in_pending_stays_registered(
    repository: Repository, tmp_path: Path, make_ingester: MakeIngester
) -> None:
    log_file = tmp_path / "slurm-120.out"
    _write(log_file, "loss=1\nloss=2\n")
    run = _save_run(repository, "120", log_file)
    ingester = make_ingester()
    ingester.follow([run])
    pending = dataclasses.replace(
        run, job=dataclasses.replace(run.job, state=JobState.PENDING), restarts=1
    )
    ingester.follow([pending])
    assert any(path == os.path.realpath(log_file) for _, path, _ in ingester.files)
    _write(log_file, "loss=7\n", mode="w")  # the restart truncates
    stats = ingester.follow([dataclasses.replace(pending, job=run.job)])
    assert stats.restarts == 1
    assert _values(repository, run, "loss") == {0: 7.0, 1: 2.0}
