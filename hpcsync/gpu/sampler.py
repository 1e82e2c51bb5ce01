"""`hpcsync sample`: read NVML for exactly the job's GPUs and append averaged JSON lines.

Runs inside the job, beside the training process (one per node for multi-node jobs). Which GPUs
and their `{i}` are decided in devices.py; the file format and step in samples.py.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TextIO

from hpcsync.errors import ConfigError, HpcsyncError
from hpcsync.gpu.devices import (
    DeviceInfo,
    GpuSelector,
    MatchedGpu,
    first_gpu_index,
    gpu_selectors_from_env,
    gpu_variable,
    match_devices,
)
from hpcsync.gpu.nvml import GpuReading, Nvml, NvmlError, NvmlUnavailable, PynvmlBackend
from hpcsync.gpu.samples import (
    MEASURES,
    GpuInfo,
    SampleRecord,
    format_record,
    parse_sample_line,
    sample_file_name,
)

logger = logging.getLogger(__name__)

DEFAULT_INTERVAL = 30.0
DEFAULT_SUBSAMPLE = 1.0
DEFAULT_OUTPUT = sample_file_name("%j", "%N")


def slurm_job_id(env: Mapping[str, str]) -> str:
    """Return the job id as Slurm prints it: `<array job>_<task>` for an array task, else the id."""
    array_job, task = env.get("SLURM_ARRAY_JOB_ID", ""), env.get("SLURM_ARRAY_TASK_ID", "")
    if array_job and task:
        return f"{array_job}_{task}"
    return env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID") or "nojob"


def node_name(env: Mapping[str, str]) -> str:
    """Return Slurm's name for this node (`SLURMD_NODENAME`), else the short host name."""
    return env.get("SLURMD_NODENAME") or socket.gethostname().split(".", 1)[0]


def output_path(pattern: str | None, env: Mapping[str, str]) -> Path:
    """Return the sample file path: `%j` job id, `%N` node name and `%%` expanded.

    Without a pattern: `hpcsync-%j-%N.gpu.jsonl` in `SLURM_SUBMIT_DIR` (where Slurm puts
    `slurm-%j.out` when the job gives no `--output`; a job that sends its stdout elsewhere
    should pass `--output` with that directory), else the working directory.
    """
    if pattern is None:
        pattern = str(Path(env.get("SLURM_SUBMIT_DIR") or ".") / DEFAULT_OUTPUT)
    codes = {"j": slurm_job_id(env), "N": node_name(env), "%": "%"}
    expanded: list[str] = []
    chars = iter(pattern)
    for char in chars:
        if char != "%":
            expanded.append(char)
            continue
        code = next(chars, "")
        expanded.append(codes.get(code, "%" + code))
    return Path("".join(expanded))


def next_step(path: Path) -> int:
    """Return the step after the highest one already in the file (0 for a new file)."""
    try:
        with path.open(encoding="utf-8", errors="replace") as existing:
            steps = [
                record.step
                for record in map(parse_sample_line, existing)
                if isinstance(record, SampleRecord)
            ]
    except FileNotFoundError:
        return 0
    return max(steps, default=-1) + 1


@dataclass
class _Average:
    """Running sums of one GPU's readings within one interval."""

    n: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, reading: GpuReading) -> None:
        """Add one reading; absent fields do not count."""
        self.n += 1
        for measure in MEASURES:
            value: float | None = getattr(reading, measure)
            if value is not None:
                self.sums[measure] = self.sums.get(measure, 0.0) + value
                self.counts[measure] = self.counts.get(measure, 0) + 1

    def means(self) -> dict[str, float | None]:
        """Return each field's mean, None where no reading had it."""
        return {
            measure: self.sums[measure] / self.counts[measure] if measure in self.counts else None
            for measure in MEASURES
        }


def run_sampler(
    *,
    interval: float,
    output: str | None,
    env: Mapping[str, str],
    nvml: Nvml | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    stop_event: threading.Event | None = None,
    subsample: float = DEFAULT_SUBSAMPLE,
    max_intervals: int | None = None,
) -> int:
    """Sample the job's GPUs until stopped and return the exit status (0, or 1 on failure).

    Reads every `subsample` seconds and appends one averaged line per GPU per `interval`
    seconds to `output` (a pattern, see output_path; None for the default). `env` is the job's
    environment. `nvml` defaults to the real pynvml; `clock` (monotonic seconds), `sleep` (by
    default a wait on the stop event) and `now` (UTC wall time) are for tests. Stops when
    `stop_event` is set, on SIGTERM/SIGINT (handlers only in the main thread), or after
    `max_intervals` full intervals, and then writes the partial interval. Without GPUs in the job
    or without NVML on the node it logs one line and returns 0. Raises ConfigError for a
    non-positive interval.
    """
    if not interval > 0 or not subsample > 0:
        raise ConfigError(f"interval and subsample must be positive, got {interval}, {subsample}")
    subsample = min(subsample, interval)
    selectors = gpu_selectors_from_env(env)
    if not selectors:
        logger.info(
            "no GPUs in this job (SLURM_STEP_GPUS, SLURM_JOB_GPUS, CUDA_VISIBLE_DEVICES); "
            "not sampling"
        )
        return 0
    backend = nvml if nvml is not None else PynvmlBackend()
    try:
        backend.init()
    except NvmlUnavailable as exc:
        logger.warning("NVML is not available on this node (%s); not sampling", exc)
        return 0
    except NvmlError as exc:
        logger.error("%s; not sampling", exc)
        return 1
    try:
        return _sample(
            backend,
            selectors,
            interval=interval,
            subsample=subsample,
            path=output_path(output, env),
            env=env,
            clock=clock,
            sleep=sleep,
            now=now,
            stop=stop_event or threading.Event(),
            max_intervals=max_intervals,
        )
    except HpcsyncError as exc:
        logger.error("%s; sampling stopped", exc)
        return 1
    finally:
        backend.shutdown()


def _sample(
    backend: Nvml,
    selectors: Sequence[GpuSelector],
    *,
    interval: float,
    subsample: float,
    path: Path,
    env: Mapping[str, str],
    clock: Callable[[], float],
    sleep: Callable[[float], object] | None,
    now: Callable[[], datetime],
    stop: threading.Event,
    max_intervals: int | None,
) -> int:
    """Match the GPUs, write the header lines, then sample until stopped; return the status."""
    gpus = match_devices(
        selectors, _devices(backend, selectors), first_gpu_index(env, len(selectors))
    )
    if not gpus:
        logger.warning(
            "none of the job's GPUs (%s) is a device NVML can open; not sampling",
            ",".join(map(str, selectors)),
        )
        return 1
    job_id, node = slurm_job_id(env), node_name(env)
    try:
        step = next_step(path)
        out = path.open("a", encoding="utf-8")
    except OSError as exc:
        logger.error("cannot open the sample file %s: %s", path, exc)
        return 1
    variable = gpu_variable(env)
    logger.info(
        "sampling GPU %s (from %s) every %g s; writing averages every %g s to %s",
        ", ".join(f"{gpu.i}={gpu.device.uuid}" for gpu in gpus),
        variable[0] if variable else "?",
        subsample,
        interval,
        path,
    )
    try:
        with out, _stop_on_signals(stop):
            driver = backend.driver_version()
            for gpu in gpus:
                info = GpuInfo(
                    time=now(),
                    job_id=job_id,
                    node=node,
                    i=gpu.i,
                    minor=gpu.device.minor,
                    uuid=gpu.device.uuid,
                    name=gpu.device.name,
                    driver=driver,
                )
                _write(out, format_record(info))
            loop = _Loop(backend, gpus, out, job_id=job_id, node=node, step=step, now=now)
            loop.run(
                interval=interval,
                subsample=subsample,
                clock=clock,
                wait=sleep or stop.wait,
                stop=stop,
                max_intervals=max_intervals,
            )
    except OSError as exc:
        logger.error("cannot write the sample file %s: %s", path, exc)
        return 1
    return 0


def _devices(backend: Nvml, selectors: Sequence[GpuSelector]) -> list[DeviceInfo]:
    """Return NVML's devices, plus those only reachable by UUID (MIG, refused by index)."""
    devices = backend.list_devices()
    known = {device.uuid for device in devices}
    for selector in selectors:
        if selector.uuid is not None and not any(u.startswith(selector.uuid) for u in known):
            device = backend.device_by_uuid(selector.uuid)
            if device is not None:
                devices.append(device)
                known.add(device.uuid)
    return devices


@dataclass
class _Loop:
    """The sampling loop: read every subsample, write averages every interval."""

    backend: Nvml
    gpus: Sequence[MatchedGpu]
    out: TextIO
    job_id: str
    node: str
    step: int
    now: Callable[[], datetime]
    averages: dict[int, _Average] = field(default_factory=dict)
    failing: set[str] = field(default_factory=set)

    def run(
        self,
        *,
        interval: float,
        subsample: float,
        clock: Callable[[], float],
        wait: Callable[[float], object],
        stop: threading.Event,
        max_intervals: int | None,
    ) -> None:
        """Sample until stop is set or max_intervals have been written, then write the rest."""
        window_start = next_read = clock()
        window_end = window_start + interval
        written = 0
        while not stop.is_set():
            current = clock()
            if current >= window_end:
                self.flush(interval)
                written += 1
                if max_intervals is not None and written >= max_intervals:
                    return
                while window_end <= current:
                    window_end += interval
                window_start = window_end - interval
            self.read()
            next_read += subsample
            current = clock()
            while next_read <= current:
                next_read += subsample
            wait(next_read - current)
        self.flush(clock() - window_start)

    def read(self) -> None:
        """Add one reading of every GPU; a GPU NVML fails to read is logged once and left out."""
        for gpu in self.gpus:
            try:
                self.averages.setdefault(gpu.i, _Average()).add(self.backend.read(gpu.device.uuid))
            except NvmlError as exc:
                if gpu.device.uuid not in self.failing:
                    self.failing.add(gpu.device.uuid)
                    logger.warning("cannot read GPU %s: %s", gpu.device.uuid, exc)

    def flush(self, seconds: float) -> None:
        """Write one line per GPU with readings, then start the next interval."""
        moment = self.now()
        wrote = False
        for gpu in self.gpus:
            average = self.averages.get(gpu.i)
            if average is None or average.n == 0:
                continue
            record = SampleRecord(
                time=moment,
                step=self.step,
                job_id=self.job_id,
                node=self.node,
                i=gpu.i,
                minor=gpu.device.minor,
                uuid=gpu.device.uuid,
                n=average.n,
                seconds=seconds,
                **average.means(),
            )
            _write(self.out, format_record(record))
            wrote = True
        if wrote:
            self.step += 1
        self.averages = {}


def _write(out: TextIO, line: str) -> None:
    """Append one line and flush it, so the daemon's tailer sees whole lines."""
    out.write(line + "\n")
    out.flush()


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Set `stop` on SIGTERM and SIGINT while inside, when running in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        """Ask the loop to stop; it writes the partial interval and returns."""
        stop.set()

    previous = {number: signal.signal(number, handle) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sampler from the command line (`python -m hpcsync.gpu.sampler`); return the status."""
    parser = argparse.ArgumentParser(prog="hpcsync sample", description=__doc__)
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL, help="seconds")
    parser.add_argument("--subsample", type=float, default=DEFAULT_SUBSAMPLE, help="seconds")
    parser.add_argument("--output", default=None, help="path; %%j and %%N are expanded")
    parser.add_argument("--count", type=int, default=None, help="stop after this many intervals")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="hpcsync sample: %(message)s")
    try:
        return run_sampler(
            interval=args.interval,
            output=args.output,
            env=dict(os.environ),
            subsample=args.subsample,
            max_intervals=args.count,
        )
    except HpcsyncError as exc:
        print(f"hpcsync sample: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
