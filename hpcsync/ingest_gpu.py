"""GPU sample files in ingestion: their lines as metric rows and `run_gpus` rows; the summary.

A sample file's `gpu` header lines become `run_gpus` rows (node, `{i}`, minor, UUID, name,
driver), written in the same transaction as the points and the cursor of that read; a header
read again (a restarted sampler, a file re-read after truncation) updates its row.

When a run ends, `runs.gpu_util_mean` is the mean of all its
`system/gpu_{i}_utilization_percentage` points: every point is one GPU's average over one
sampling interval and counts once, so it is the mean over GPUs and intervals (see
`metric_store.gpu_util_mean`). A run without samples keeps what it had (NULL). The summary
is written once the run's sample files have been read to their end (after a retry, if one of
them failed to read), by `PendingSummaries`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass, field

from hpcsync.db.metric_store import Row, RunGpu, gpu_util_mean, set_gpu_util_mean
from hpcsync.db.repository import Repository
from hpcsync.errors import StorageError
from hpcsync.gpu.samples import GpuInfo, SampleRecord, parse_sample_line, sample_metrics

log = logging.getLogger(__name__)


@dataclass
class SampleRows:
    """What some lines of a sample file hold: metric rows and the GPUs their headers name."""

    points: list[Row] = field(default_factory=list)
    gpus: list[RunGpu] = field(default_factory=list)


def sample_rows(lines: Iterable[str]) -> SampleRows:
    """Return the metric rows and GPU rows of sample file lines; unreadable lines are skipped."""
    rows = SampleRows()
    for line in lines:
        record = parse_sample_line(line)
        if isinstance(record, SampleRecord):
            rows.points.extend(
                (p.name, p.step, p.value, p.timestamp) for p in sample_metrics(record)
            )
        elif isinstance(record, GpuInfo):
            rows.gpus.append(run_gpu(record))
    return rows


def run_gpu(info: GpuInfo) -> RunGpu:
    """Return the `run_gpus` row of one header line."""
    return RunGpu(
        node=info.node,
        i=info.i,
        minor=info.minor,
        uuid=info.uuid,
        name=info.name,
        driver=info.driver,
        seen_at=info.time,
    )


def write_gpu_summaries(repository: Repository, run_ids: Sequence[int]) -> dict[int, float]:
    """Store `gpu_util_mean` of these ended runs in one transaction; return those written.

    Raises StorageError.
    """
    written: dict[int, float] = {}
    with repository.atomic() as connection:
        for run_id in run_ids:
            mean = gpu_util_mean(connection, run_id)
            if mean is not None:
                set_gpu_util_mean(connection, run_id, mean)
                written[run_id] = mean
    for run_id, mean in written.items():
        log.debug("run %d: gpu_util_mean %.1f", run_id, mean)
    return written


class PendingSummaries:
    """Ended runs whose summary is still to be written (a sample file failed, or the database)."""

    def __init__(self, repository: Repository) -> None:
        self.repository = repository
        self.runs: set[int] = set()

    def write(self, waiting: Set[int]) -> None:
        """Write the summaries of the pending runs not `waiting` on a sample file; never raises."""
        due = sorted(self.runs - waiting)
        if not due:
            return
        try:
            write_gpu_summaries(self.repository, due)
        except StorageError as exc:
            log.warning("writing the GPU summary of %d runs failed, retrying: %s", len(due), exc)
            return
        self.runs.difference_update(due)
