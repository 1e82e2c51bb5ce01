"""The real pynvml against the fake libnvidia-ml.so.1, in a subprocess per run.

pynvml loads the library once per process, and the dynamic loader reads LD_LIBRARY_PATH at
start, so each case runs `python -m hpcsync.gpu.sampler` with its own environment.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from hpcsync.gpu.samples import GpuInfo, SampleRecord, parse_sample_line

BUILD_SCRIPT = Path(__file__).parents[1] / "fake_nvml" / "build.py"
UUID0 = "GPU-00000000-0000-4000-8000-000000000000"  # minor 0, NVML index 1
UUID1 = "GPU-11111111-1111-4111-8111-111111111111"  # minor 1, NVML index 0
MINOR0 = {
    "utilization_percentage": 30.0,
    "memory_usage_megabytes": 3000.0,
    "power_usage_watts": 150.0,
}
MINOR1 = {
    "utilization_percentage": 71.0,
    "memory_usage_megabytes": 7100.0,
    "power_usage_watts": 271.0,
}

Records = list[GpuInfo | SampleRecord]


def load_build_module() -> ModuleType:
    """Import tests/fake_nvml/build.py by path."""
    spec = importlib.util.spec_from_file_location("fake_nvml_build", BUILD_SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def fake_nvml(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Return a function building the fake library (by omitted functions) and giving its dir."""
    build = load_build_module()
    if build.find_compiler() is None:
        if os.environ.get("HPCSYNC_REQUIRE_SLURM") == "1":
            pytest.fail("no C compiler to build the fake NVML, and HPCSYNC_REQUIRE_SLURM=1")
        pytest.skip("no C compiler (cc) to build the fake NVML library")
    out_dir = tmp_path_factory.mktemp("fake_nvml")

    def build_dir(omit: tuple[str, ...] = build.DEFAULT_OMIT) -> Path:
        """Return the directory holding libnvidia-ml.so.1 built without `omit`."""
        directory: Path = build.build_fake_nvml(out_dir, omit=omit)
        return directory

    return build_dir


def run(
    lib_dir: Path, tmp_path: Path, env: dict[str, str], *args: str
) -> tuple[subprocess.CompletedProcess[str], Records]:
    """Run the sampler for one short interval with a clean environment; return it and its file."""
    output = tmp_path / "hpcsync-%j-%N.gpu.jsonl"
    command = [sys.executable, "-m", "hpcsync.gpu.sampler", "--output", str(output)]
    command += list(args) or ["--interval", "0.2", "--subsample", "0.05", "--count", "1"]
    process = subprocess.run(
        command,
        env=clean_env(lib_dir, env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return process, read_records(tmp_path)


def clean_env(lib_dir: Path, env: dict[str, str]) -> dict[str, str]:
    """Return a job-like environment that inherits nothing from a Slurm job running the tests."""
    base = {"SLURM_JOB_ID": "42", "SLURMD_NODENAME": "gn01", "LD_LIBRARY_PATH": str(lib_dir)}
    inherited = {name: os.environ[name] for name in ("PATH", "PYTHONPATH") if name in os.environ}
    return {**inherited, **base, **env}


def read_records(tmp_path: Path) -> Records:
    """Return the parsed lines of the one sample file in tmp_path (empty when there is none)."""
    files = list(tmp_path.glob("hpcsync-*.gpu.jsonl"))
    assert len(files) <= 1
    if not files:
        return []
    records = [parse_sample_line(line) for line in files[0].read_text().splitlines()]
    assert None not in records
    return [record for record in records if record is not None]


def samples(records: Records) -> list[SampleRecord]:
    """Return the sample records."""
    return [record for record in records if isinstance(record, SampleRecord)]


def values(record: SampleRecord) -> dict[str, float | None]:
    """Return the three SPEC measures of a record."""
    return {key: getattr(record, key) for key in MINOR0}


def test_index_0_is_the_device_with_minor_0(fake_nvml: Callable[..., Path], tmp_path: Path) -> None:
    env = {"SLURM_JOB_GPUS": "0", "CUDA_VISIBLE_DEVICES": "0"}
    process, records = run(fake_nvml(), tmp_path, env)
    assert process.returncode == 0, process.stderr
    assert (tmp_path / "hpcsync-42-gn01.gpu.jsonl").exists()
    header = records[0]
    assert isinstance(header, GpuInfo)
    assert (header.i, header.minor, header.uuid, header.name) == (0, 0, UUID0, "Fake GPU minor0")
    assert header.driver == "999.99-fake"
    assert {record.uuid for record in records} == {UUID0}
    [sample] = samples(records)
    assert values(sample) == MINOR0
    assert sample.memory_total_megabytes == 40000.0
    # The fake library has no nvmlDeviceGetTemperature: skipped, not fatal.
    assert sample.temperature_celsius is None
    assert "temperature" in process.stderr


def test_index_1_is_nvml_index_0(fake_nvml: Callable[..., Path], tmp_path: Path) -> None:
    _, records = run(fake_nvml(), tmp_path, {"SLURM_JOB_GPUS": "1"})
    [sample] = samples(records)
    assert (sample.i, sample.minor, sample.uuid) == (0, 1, UUID1)
    assert values(sample) == MINOR1


def test_two_gpus_in_order(fake_nvml: Callable[..., Path], tmp_path: Path) -> None:
    env = {"SLURM_JOB_GPUS": "0,1", "CUDA_VISIBLE_DEVICES": "0,1"}
    _, records = run(fake_nvml(), tmp_path, env)
    assert [(type(r).__name__, r.i, r.minor) for r in records] == [
        ("GpuInfo", 0, 0),
        ("GpuInfo", 1, 1),
        ("SampleRecord", 0, 0),
        ("SampleRecord", 1, 1),
    ]
    assert [values(sample) for sample in samples(records)] == [MINOR0, MINOR1]


def test_uuid_in_cuda_visible_devices(fake_nvml: Callable[..., Path], tmp_path: Path) -> None:
    _, records = run(fake_nvml(), tmp_path, {"CUDA_VISIBLE_DEVICES": UUID1})
    [sample] = samples(records)
    assert (sample.uuid, sample.minor) == (UUID1, 1)
    assert values(sample) == MINOR1


def test_every_function_present(fake_nvml: Callable[..., Path], tmp_path: Path) -> None:
    _, records = run(fake_nvml(omit=()), tmp_path, {"SLURM_JOB_GPUS": "0"})
    [sample] = samples(records)
    assert sample.temperature_celsius == 50.0


def test_unsupported_power_and_refused_device(
    fake_nvml: Callable[..., Path], tmp_path: Path
) -> None:
    env = {
        "SLURM_JOB_GPUS": "0,1",
        "FAKE_NVML_NOT_SUPPORTED": "power",
        "FAKE_NVML_NO_PERMISSION": "0",  # NVML index 0 = minor 1, outside the job's cgroup
    }
    process, records = run(fake_nvml(), tmp_path, env)
    assert process.returncode == 0, process.stderr
    [sample] = samples(records)
    assert (sample.i, sample.minor) == (0, 0)
    assert sample.utilization_percentage == 30.0
    assert sample.power_usage_watts is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SLURM_JOB_GPUS": "0"}, "NVML is not available"),
        ({}, "no GPUs in this job"),
    ],
)
def test_no_library_or_no_gpus_exit_0_with_one_line(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    if ctypes.util.find_library("nvidia-ml"):
        pytest.skip("this machine has a real libnvidia-ml")
    empty = tmp_path / "empty"
    empty.mkdir()
    process, records = run(empty, tmp_path, env)
    assert process.returncode == 0
    assert records == []
    assert message in process.stderr
    assert len(process.stderr.strip().splitlines()) == 1, process.stderr


def test_driver_not_loaded_exits_0(fake_nvml: Callable[..., Path], tmp_path: Path) -> None:
    env = {"SLURM_JOB_GPUS": "0", "FAKE_NVML_INIT_RESULT": "9"}
    process, records = run(fake_nvml(), tmp_path, env)
    assert (process.returncode, records) == (0, [])
    assert len(process.stderr.strip().splitlines()) == 1, process.stderr


def test_sigterm_writes_the_partial_interval(
    fake_nvml: Callable[..., Path], tmp_path: Path
) -> None:
    output = tmp_path / "hpcsync-%j-%N.gpu.jsonl"
    command = [sys.executable, "-m", "hpcsync.gpu.sampler", "--output", str(output)]
    command += ["--interval", "600", "--subsample", "0.05"]
    env = clean_env(fake_nvml(), {"SLURM_JOB_GPUS": "0,1"})
    with subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) as process:
        deadline = time.monotonic() + 30
        while len(read_records(tmp_path)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # let it take a few readings
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    partial = samples(read_records(tmp_path))
    assert [(sample.i, sample.minor, sample.step) for sample in partial] == [(0, 0, 0), (1, 1, 0)]
    assert all(sample.n >= 1 and sample.seconds < 600 for sample in partial)
    assert [values(sample) for sample in partial] == [MINOR0, MINOR1]
