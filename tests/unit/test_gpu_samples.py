"""The sample file's lines, and the metric points they become."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from hpcsync.gpu.samples import (
    GpuInfo,
    SampleRecord,
    format_record,
    parse_sample_line,
    sample_file_name,
    sample_metrics,
)
from hpcsync.models import MetricPoint

AT = datetime(2024, 5, 1, 12, 0, 30, 250000, tzinfo=UTC)
UUID = "GPU-00000000-0000-4000-8000-000000000000"
INFO = GpuInfo(
    time=AT, job_id="17_3", node="gn01", i=1, minor=0, uuid=UUID, name="A100", driver="550.1"
)
SAMPLE = SampleRecord(
    time=AT,
    step=7,
    job_id="17_3",
    node="gn01",
    i=1,
    minor=0,
    uuid=UUID,
    n=30,
    seconds=30.0,
    utilization_percentage=42.5,
    memory_usage_megabytes=3000.0,
    memory_total_megabytes=40000.0,
    power_usage_watts=150.25,
    temperature_celsius=None,
)


def test_file_name() -> None:
    assert sample_file_name("17_3", "gn01") == "hpcsync-17_3-gn01.gpu.jsonl"


@pytest.mark.parametrize("record", [INFO, SAMPLE])
def test_format_then_parse_round_trips(record: GpuInfo | SampleRecord) -> None:
    line = format_record(record)
    assert "\n" not in line
    assert parse_sample_line(line + "\n") == record


def test_a_captured_line_parses() -> None:
    line = (
        '{"type":"sample","time":"2024-05-01T12:00:30.250Z","step":0,"job_id":"42","node":"n1",'
        '"i":0,"minor":0,"uuid":"GPU-0","n":4,"seconds":0.2,"utilization_percentage":30.0,'
        '"memory_usage_megabytes":3000.0,"memory_total_megabytes":40000.0,'
        '"power_usage_watts":150.0,"temperature_celsius":null}'
    )
    record = parse_sample_line(line)
    assert isinstance(record, SampleRecord)
    assert (record.time, record.step, record.i, record.power_usage_watts) == (AT, 0, 0, 150.0)
    assert record.temperature_celsius is None


@pytest.mark.parametrize(
    "line",
    [
        "",
        "   \n",
        "not json",
        '{"type":"sample","time":"2024-05-01T12:00:30Z","step":0,',  # a partly written line
        "[1, 2]",
        '{"type":"future","x":1}',
        '{"type":"gpu","time":"2024-05-01T12:00:30Z","job_id":"1","node":"n","i":true,"uuid":"u"}',
        '{"type":"sample","time":"yesterday","step":0,"job_id":"1","node":"n","i":0,"uuid":"u"}',
        '{"type":"sample","time":"2024-05-01T12:00:30Z","job_id":"1","node":"n","i":0,"uuid":"u"}',
        '{"type":"sample","time":"2024-05-01T12:00:30Z","step":0,"job_id":"1","node":"n","i":0,'
        '"uuid":"u","power_usage_watts":"high"}',
    ],
)
def test_unreadable_lines_give_none(line: str) -> None:
    assert parse_sample_line(line) is None


def test_time_without_zone_is_utc() -> None:
    line = (
        '{"type":"gpu","time":"2024-05-01T12:00:30.250","job_id":"1","node":"n","i":0,"uuid":"u"}'
    )
    record = parse_sample_line(line)
    assert isinstance(record, GpuInfo)
    assert record.time == AT
    assert record.minor is None


def test_metrics_use_mlflow_names_and_skip_absent_values() -> None:
    assert sample_metrics(SAMPLE) == [
        MetricPoint("system/gpu_1_utilization_percentage", 7, 42.5, AT),
        MetricPoint("system/gpu_1_memory_usage_megabytes", 7, 3000.0, AT),
        MetricPoint("system/gpu_1_memory_usage_percentage", 7, 7.5, AT),
        MetricPoint("system/gpu_1_power_usage_watts", 7, 150.25, AT),
    ]


def test_temperature_has_its_own_name() -> None:
    record = SampleRecord(AT, 0, "1", "n", 0, 0, "u", n=1, seconds=1.0, temperature_celsius=61.0)
    assert sample_metrics(record) == [MetricPoint("system/gpu_0_temperature_celsius", 0, 61.0, AT)]


def test_re_reading_a_line_gives_the_same_keys() -> None:
    line = format_record(SAMPLE)
    first, second = parse_sample_line(line), parse_sample_line(line)
    assert isinstance(first, SampleRecord)
    assert isinstance(second, SampleRecord)
    keys = [(point.name, point.step) for point in sample_metrics(first)]
    assert keys == [(point.name, point.step) for point in sample_metrics(second)]
