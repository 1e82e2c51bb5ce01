"""The GPU sample file: its JSON lines, written by the sampler and read by the daemon (pure).

A file is named `hpcsync-<job id>-<node>.gpu.jsonl`, where the job id is the one Slurm prints
(`1234`, or `1234_7` for an array task, like `Job.job_id`). Each line is one JSON object:

* `{"type": "gpu", ...}`: one per GPU the sampler found, written when it starts (again after a
  restart): time, job_id, node, i, minor, uuid, name, driver. It says which physical GPUs the
  run had.
* `{"type": "sample", ...}`: one per GPU per interval: time (ISO UTC, the interval's end), step,
  job_id, node, i, minor, uuid, n (readings averaged), seconds (the span they cover),
  utilization_percentage, memory_usage_megabytes, memory_total_megabytes, power_usage_watts,
  temperature_celsius. A value the driver cannot give is null.

**Step** is the interval's number within the file: 0, 1, 2, ... shared by the GPUs of one
interval. It is written into the line, so re-reading the file gives the same (name, step) keys;
a restarted sampler appends and continues after the file's highest step. `{i}` is the GPU's
index within the job (see devices.py).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hpcsync.models import MetricPoint

logger = logging.getLogger(__name__)

GPU_TYPE = "gpu"
SAMPLE_TYPE = "sample"
MEASURES = (
    "utilization_percentage",
    "memory_usage_megabytes",
    "memory_total_megabytes",
    "power_usage_watts",
    "temperature_celsius",
)


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """A physical GPU a job had on one node: the header lines of a sample file."""

    time: datetime
    job_id: str
    node: str
    i: int
    minor: int | None
    uuid: str
    name: str
    driver: str | None = None


@dataclass(frozen=True, slots=True)
class SampleRecord:
    """One GPU's readings averaged over one interval."""

    time: datetime
    step: int
    job_id: str
    node: str
    i: int
    minor: int | None
    uuid: str
    n: int
    seconds: float
    utilization_percentage: float | None = None
    memory_usage_megabytes: float | None = None
    memory_total_megabytes: float | None = None
    power_usage_watts: float | None = None
    temperature_celsius: float | None = None


def sample_file_name(job_id: str, node: str) -> str:
    """Return the default sample file name for a job id (as Slurm prints it) and a node."""
    return f"hpcsync-{job_id}-{node}.gpu.jsonl"


def format_record(record: GpuInfo | SampleRecord) -> str:
    """Return the JSON line (without newline) for a record."""
    data: dict[str, Any]
    if isinstance(record, GpuInfo):
        data = {"type": GPU_TYPE, "time": _format_time(record.time)}
        data |= {
            "job_id": record.job_id,
            "node": record.node,
            "i": record.i,
            "minor": record.minor,
            "uuid": record.uuid,
            "name": record.name,
            "driver": record.driver,
        }
    else:
        data = {"type": SAMPLE_TYPE, "time": _format_time(record.time), "step": record.step}
        data |= {
            "job_id": record.job_id,
            "node": record.node,
            "i": record.i,
            "minor": record.minor,
            "uuid": record.uuid,
            "n": record.n,
            "seconds": round(record.seconds, 3),
        }
        for measure in MEASURES:
            value = getattr(record, measure)
            data[measure] = None if value is None else round(value, 3)
    return json.dumps(data, separators=(",", ":"))


def parse_sample_line(line: str) -> SampleRecord | GpuInfo | None:
    """Return the record a line holds; None for a blank, unknown, partial or malformed line."""
    text = line.strip()
    if not text:
        return None
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        kind = data.get("type")
        if kind == GPU_TYPE:
            return GpuInfo(
                time=_time(data["time"]),
                job_id=_str(data["job_id"]),
                node=_str(data["node"]),
                i=_int(data["i"]),
                minor=_optional_int(data.get("minor")),
                uuid=_str(data["uuid"]),
                name=_str(data.get("name", "")),
                driver=_optional_str(data.get("driver")),
            )
        if kind == SAMPLE_TYPE:
            measures = {measure: _optional_float(data.get(measure)) for measure in MEASURES}
            return SampleRecord(
                time=_time(data["time"]),
                step=_int(data["step"]),
                job_id=_str(data["job_id"]),
                node=_str(data["node"]),
                i=_int(data["i"]),
                minor=_optional_int(data.get("minor")),
                uuid=_str(data["uuid"]),
                n=_int(data.get("n", 1)),
                seconds=_float(data.get("seconds", 0.0)),
                **measures,
            )
    except (ValueError, KeyError, TypeError) as exc:
        logger.debug("skipping unreadable sample line %.80r: %s", text, exc)
        return None
    logger.debug("skipping sample line of unknown type %.80r", text)
    return None


def sample_metrics(record: SampleRecord) -> list[MetricPoint]:
    """Return the MLflow-named metric points of one sample; absent values give no point.

    Names follow MLflow's GPU monitor (`system/gpu_{i}_utilization_percentage`,
    `_memory_usage_megabytes`, `_memory_usage_percentage`, `_power_usage_watts`); MLflow has no
    temperature, so `system/gpu_{i}_temperature_celsius` is ours, in the same pattern.
    """
    prefix = f"system/gpu_{record.i}_"
    values: list[tuple[str, float | None]] = [
        ("utilization_percentage", record.utilization_percentage),
        ("memory_usage_megabytes", record.memory_usage_megabytes),
        ("memory_usage_percentage", _percentage(record)),
        ("power_usage_watts", record.power_usage_watts),
        ("temperature_celsius", record.temperature_celsius),
    ]
    return [
        MetricPoint(name=prefix + suffix, step=record.step, value=value, timestamp=record.time)
        for suffix, value in values
        if value is not None
    ]


def _percentage(record: SampleRecord) -> float | None:
    """Return memory used as a percentage of total, or None when either is unknown."""
    used, total = record.memory_usage_megabytes, record.memory_total_megabytes
    if used is None or not total:
        return None
    return round(used / total * 100, 1)


def _format_time(moment: datetime) -> str:
    """Return an ISO 8601 UTC time with milliseconds and a Z."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _time(value: object) -> datetime:
    """Return a timezone-aware UTC datetime from an ISO string; raises ValueError."""
    moment = datetime.fromisoformat(_str(value))
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _str(value: object) -> str:
    """Return value if it is a string; raises TypeError."""
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _optional_str(value: object) -> str | None:
    """Return a string or None; raises TypeError."""
    return None if value is None else _str(value)


def _int(value: object) -> int:
    """Return value if it is an integer (not a bool); raises TypeError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _optional_int(value: object) -> int | None:
    """Return an integer or None; raises TypeError."""
    return None if value is None else _int(value)


def _float(value: object) -> float:
    """Return value as a finite float if it is a number; raises TypeError or ValueError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value!r}")
    return float(value)


def _optional_float(value: object) -> float | None:
    """Return a float or None; raises TypeError or ValueError."""
    return None if value is None else _float(value)
