"""The sampler loop with FakeNvml and a fake clock: nothing sleeps for real."""

from __future__ import annotations

import logging
import os
import signal
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from hpcsync.errors import ConfigError
from hpcsync.gpu.nvml import FakeGpu, FakeNvml, GpuReading
from hpcsync.gpu.sampler import next_step, output_path, run_sampler, slurm_job_id
from hpcsync.gpu.samples import GpuInfo, SampleRecord, parse_sample_line

UUID0 = "GPU-00000000-0000-4000-8000-000000000000"
UUID1 = "GPU-11111111-1111-4111-8111-111111111111"
MIG = "MIG-22222222-2222-4222-8222-222222222222"
START = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
ENV = {"SLURM_JOB_ID": "42", "SLURMD_NODENAME": "gn01", "SLURM_JOB_GPUS": "0"}


class FakeClock:
    """A monotonic clock that sleeping advances; may set a stop event after some sleeps."""

    def __init__(self, stop_after: int | None = None, event: threading.Event | None = None):
        """Start at t=1000."""
        self.t = 1000.0
        self.sleeps = 0
        self.stop_after = stop_after
        self.event = event

    def __call__(self) -> float:
        """Return the current time."""
        return self.t

    def sleep(self, seconds: float) -> None:
        """Advance time; set the event after `stop_after` sleeps."""
        self.sleeps += 1
        self.t += seconds
        if self.event is not None and self.sleeps == self.stop_after:
            self.event.set()

    def now(self) -> datetime:
        """Return the wall time matching the monotonic time."""
        return START + timedelta(seconds=self.t - 1000.0)


def two_gpus() -> FakeNvml:
    """Return a fake whose NVML index 0 is minor 1 and index 1 is minor 0."""
    return FakeNvml(
        gpus=[
            FakeGpu(
                index=0,
                minor=1,
                uuid=UUID1,
                name="minor1",
                readings=[GpuReading(utilization_percentage=71.0, power_usage_watts=271.0)],
            ),
            FakeGpu(
                index=1,
                minor=0,
                uuid=UUID0,
                name="minor0",
                readings=[
                    GpuReading(
                        utilization_percentage=10.0,
                        memory_usage_megabytes=1000.0,
                        memory_total_megabytes=40000.0,
                        power_usage_watts=100.0,
                    ),
                    GpuReading(utilization_percentage=30.0, memory_usage_megabytes=3000.0),
                ],
            ),
        ]
    )


def sample(
    tmp_path: Path, env: dict[str, str], nvml: FakeNvml, **kwargs: Any
) -> tuple[int, list[GpuInfo | SampleRecord]]:
    """Run the sampler into tmp_path and return its status and the parsed file."""
    clock = kwargs.pop("clock", None) or FakeClock()
    path = tmp_path / "out-%j-%N.jsonl"
    kwargs.setdefault("max_intervals", 2)
    status = run_sampler(
        interval=10.0,
        output=str(path),
        env=env,
        nvml=nvml,
        clock=clock,
        sleep=clock.sleep,
        now=clock.now,
        **kwargs,
    )
    files = list(tmp_path.glob("out-*.jsonl"))
    lines = files[0].read_text().splitlines() if files else []
    records = [parse_sample_line(line) for line in lines]
    assert None not in records
    return status, [record for record in records if record is not None]


def test_samples_only_the_job_gpu_by_minor_and_averages(tmp_path: Path) -> None:
    nvml = two_gpus()
    status, records = sample(tmp_path, ENV, nvml)
    assert status == 0
    assert (tmp_path / "out-42-gn01.jsonl").exists()
    header, *samples = records
    assert header == GpuInfo(START, "42", "gn01", 0, 0, UUID0, "minor0", "999.99-fake")
    sampled = [record for record in samples if isinstance(record, SampleRecord)]
    assert [(r.step, r.i, r.uuid, r.n, r.seconds) for r in sampled] == [
        (0, 0, UUID0, 10, 10.0),
        (1, 0, UUID0, 10, 10.0),
    ]
    first = sampled[0]
    assert first.time == START + timedelta(seconds=10)
    assert first.utilization_percentage == 20.0
    assert first.memory_usage_megabytes == 2000.0
    assert first.power_usage_watts == 100.0  # present in half the readings: their mean
    assert first.temperature_celsius is None
    assert nvml.gpus[0].reads == 0
    assert nvml.shut_down


def test_two_gpus_in_list_order(tmp_path: Path) -> None:
    _, records = sample(tmp_path, {**ENV, "SLURM_JOB_GPUS": "0,1"}, two_gpus(), max_intervals=1)
    assert [(type(r).__name__, r.i, r.minor) for r in records] == [
        ("GpuInfo", 0, 0),
        ("GpuInfo", 1, 1),
        ("SampleRecord", 0, 0),
        ("SampleRecord", 1, 1),
    ]


def test_uuid_in_cuda_visible_devices(tmp_path: Path) -> None:
    env = {"SLURM_JOB_ID": "42", "SLURMD_NODENAME": "gn01", "CUDA_VISIBLE_DEVICES": UUID1}
    _, records = sample(tmp_path, env, two_gpus(), max_intervals=1)
    assert {r.uuid for r in records} == {UUID1}


def test_mig_instance_found_by_uuid(tmp_path: Path) -> None:
    nvml = two_gpus()
    nvml.by_uuid_only = [FakeGpu(index=None, minor=None, uuid=MIG, name="MIG 1g.10gb")]
    env = {"SLURM_JOB_ID": "42", "SLURMD_NODENAME": "gn01", "CUDA_VISIBLE_DEVICES": MIG}
    _, records = sample(tmp_path, env, nvml, max_intervals=1)
    assert [(type(r).__name__, r.uuid, r.minor) for r in records] == [
        ("GpuInfo", MIG, None),
        ("SampleRecord", MIG, None),
    ]


def test_device_refused_by_cgroup_is_skipped(tmp_path: Path) -> None:
    nvml = two_gpus()
    nvml.gpus[0].refused = True  # minor 1 belongs to another job
    _, records = sample(tmp_path, {**ENV, "SLURM_JOB_GPUS": "0,1"}, nvml, max_intervals=1)
    assert {(r.i, r.uuid) for r in records} == {(0, UUID0)}


def test_stop_event_writes_the_partial_interval(tmp_path: Path) -> None:
    stop = threading.Event()
    clock = FakeClock(stop_after=15, event=stop)
    status, records = sample(tmp_path, ENV, two_gpus(), clock=clock, stop_event=stop)
    samples = [r for r in records if isinstance(r, SampleRecord)]
    assert status == 0
    assert [(r.step, r.n, r.seconds) for r in samples] == [(0, 10, 10.0), (1, 5, 5.0)]


def test_sigterm_stops_cleanly_and_restores_the_handler(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    clock = FakeClock()
    original_sleep = clock.sleep

    def sleep(seconds: float) -> None:
        original_sleep(seconds)
        if clock.sleeps == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    clock.sleep = sleep  # type: ignore[method-assign]
    status, records = sample(tmp_path, ENV, two_gpus(), clock=clock, max_intervals=None)
    samples = [r for r in records if isinstance(r, SampleRecord)]
    assert status == 0
    assert [(r.step, r.n, r.seconds) for r in samples] == [(0, 3, 3.0)]
    assert signal.getsignal(signal.SIGTERM) is before


def test_runs_in_a_thread_without_signal_handlers(tmp_path: Path) -> None:
    stop = threading.Event()
    clock = FakeClock(stop_after=4, event=stop)
    result: list[int] = []
    thread = threading.Thread(
        target=lambda: result.append(
            sample(tmp_path, ENV, two_gpus(), clock=clock, stop_event=stop)[0]
        )
    )
    thread.start()
    thread.join(timeout=10)
    assert result == [0]


def test_restart_appends_and_continues_steps(tmp_path: Path) -> None:
    sample(tmp_path, ENV, two_gpus())
    _, records = sample(tmp_path, ENV, two_gpus())
    steps = [r.step for r in records if isinstance(r, SampleRecord)]
    assert steps == [0, 1, 2, 3]
    assert sum(isinstance(r, GpuInfo) for r in records) == 2
    assert next_step(tmp_path / "out-42-gn01.jsonl") == 4
    assert next_step(tmp_path / "missing.jsonl") == 0


def test_cpu_only_job_says_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    nvml = two_gpus()
    status, records = sample(tmp_path, {"SLURM_JOB_ID": "42"}, nvml)
    assert (status, records, nvml.initialized, nvml.shut_down) == (0, [], False, False)
    assert len(caplog.records) == 1
    assert "no GPUs" in caplog.text


def test_no_nvml_says_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    status, records = sample(tmp_path, ENV, FakeNvml(unavailable="no libnvidia-ml.so.1"))
    assert (status, records) == (0, [])
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "NVML is not available" in caplog.text


def test_job_gpus_not_in_nvml_fail(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    status, records = sample(tmp_path, {**ENV, "SLURM_JOB_GPUS": "7"}, two_gpus())
    assert (status, records) == (1, [])
    assert "none of the job's GPUs" in caplog.text


def test_multi_node_indices(tmp_path: Path) -> None:
    env = {**ENV, "SLURM_JOB_NODELIST": "gn[01-02]", "SLURMD_NODENAME": "gn02"}
    env["SLURM_JOB_GPUS"] = "0,1"
    _, records = sample(tmp_path, env, two_gpus(), max_intervals=1)
    assert sorted({(r.node, r.i, r.minor) for r in records}) == [("gn02", 2, 0), ("gn02", 3, 1)]


def test_bad_interval() -> None:
    with pytest.raises(ConfigError):
        run_sampler(interval=0, output=None, env=ENV, nvml=two_gpus())


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"SLURM_JOB_ID": "18", "SLURM_ARRAY_JOB_ID": "17", "SLURM_ARRAY_TASK_ID": "3"}, "17_3"),
        ({"SLURM_JOB_ID": "18"}, "18"),
        ({}, "nojob"),
    ],
)
def test_job_id_is_the_one_slurm_prints(env: dict[str, str], expected: str) -> None:
    assert slurm_job_id(env) == expected


def test_output_path() -> None:
    env = {
        "SLURM_JOB_ID": "18",
        "SLURM_ARRAY_JOB_ID": "17",
        "SLURM_ARRAY_TASK_ID": "3",
        "SLURMD_NODENAME": "gn01",
        "SLURM_SUBMIT_DIR": "/home/u/exp",
    }
    assert output_path(None, env) == Path("/home/u/exp/hpcsync-17_3-gn01.gpu.jsonl")
    assert output_path("/logs/%j/gpu-%N-100%%-%x.jsonl", env) == Path(
        "/logs/17_3/gpu-gn01-100%-%x.jsonl"
    )
    assert output_path(None, {"SLURMD_NODENAME": "n"}) == Path("hpcsync-nojob-n.gpu.jsonl")
