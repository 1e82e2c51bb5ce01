"""What the read-only commands print: `runs`, `show` and `check`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from hpcsync import daemon
from hpcsync.config import Settings
from hpcsync.db import schema
from hpcsync.db.queries import RunFilter, main_curve_name
from hpcsync.db.repository import Repository, masked_url
from hpcsync.errors import HpcsyncError

_COLOURS = {
    "pending": "\033[33m",
    "running": "\033[36m",
    "completed": "\033[32m",
    "failed": "\033[31m",
    "cancelled": "\033[35m",
}
_RESET = "\033[0m"
_BARS = "▁▂▃▄▅▆▇█"


def print_json(data: Any) -> None:
    """Print `data` as JSON, datetimes in ISO 8601."""
    print(json.dumps(data, indent=2, default=_json_default, sort_keys=True))


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__name__}")


def _open(settings: Settings) -> Repository:
    return daemon.open_repository(settings)


def list_runs(settings: Settings, args: argparse.Namespace) -> int:
    """Print runs as a table or JSON; return the exit code."""
    repository = _open(settings)
    try:
        rows = repository.list_runs(
            RunFilter(
                experiment=args.experiment,
                status=args.state,
                user=args.user,
                cluster=settings.cluster_name or None,
                limit=args.limit,
            )
        )
        losses = repository.latest_losses([row["id"] for row in rows])
    finally:
        repository.dispose()
    for row in rows:
        name, value = losses.get(row["id"], (None, None))
        row["loss"] = None if name is None else {"name": name, "value": value}
    if args.json:
        print_json(rows)
        return 0
    colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    header = "JOBID EXPERIMENT RUN STATUS SLURM EXIT ELAPSED CPUS MEM GPUS GPU% LOSS"
    table = [header.split()]
    for row in rows:
        table.append(
            [
                row["slurm_job_id"],
                row["experiment"],
                row["name"] or "-",
                row["status"],
                row["slurm_state"],
                "-" if row["exit_code"] is None else str(row["exit_code"]),
                _elapsed(row),
                _text(row["num_cpus"]),
                f"{row['mem_mb']}M" if row["mem_mb"] else "-",
                _gpus(row),
                "-" if row["gpu_util_mean"] is None else f"{row['gpu_util_mean']:.0f}",
                f"{row['loss']['value']:.4g}" if row["loss"] else "-",
            ]
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for number, line in enumerate(table):
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=True)]
        if colour and number > 0:
            cells[3] = f"{_COLOURS.get(line[3], '')}{cells[3]}{_RESET}"
        print("  ".join(cells).rstrip())
    if len(table) == 1:
        print("(no runs)")
    return 0


def show_run(settings: Settings, job_id: str, *, as_json: bool) -> int:
    """Print one run with its events; return 1 when there is none."""
    repository = _open(settings)
    curve: tuple[str, list[tuple[int, float]]] | None = None
    try:
        row = repository.find_run(job_id, settings.cluster_name or None)
        if row is not None and row["metrics"]:
            name = main_curve_name(list(row["metrics"])) or next(iter(row["metrics"]))
            curve = (name, repository.metric_series(row["id"], name))
    finally:
        repository.dispose()
    if row is None:
        print(f"hpcsync: no run for job {job_id}", file=sys.stderr)
        return 1
    if as_json:
        print_json(row)
        return 0
    events = row.pop("events")
    latest = row.pop("metrics")
    params = row.pop("params")
    width = max(len(key) for key in row)
    for key, value in row.items():
        shown = value.isoformat() if isinstance(value, datetime) else value
        print(f"{key.ljust(width)}  {'-' if shown in (None, '', {}) else shown}")
    print("events:")
    for event in events:
        reason = f" ({event['reason']})" if event["reason"] else ""
        print(
            f"  {event['at'].isoformat()}  {event['from_state'] or 'new'} -> {event['to_state']}{reason}"
        )
    if params:
        print("params:")
        key_width = max(len(key) for key in params)
        for key, value in sorted(params.items()):
            print(f"  {key.ljust(key_width)}  {value}")
    if latest:
        print("latest metrics:")
        name_width = max(len(name) for name in latest)
        for name, point in latest.items():
            print(f"  {name.ljust(name_width)}  {point['value']:.6g}  (step {point['step']})")
    if curve is not None and curve[1]:
        name, points = curve
        values = [value for _, value in points]
        print(
            f"{name}: {sparkline(values)}  "
            f"{values[0]:.4g} -> {values[-1]:.4g} over steps {points[0][0]}..{points[-1][0]}"
        )
    return 0


def sparkline(values: Sequence[float], width: int = 40) -> str:
    """Return a one-line bar chart of `values`, averaged down to at most `width` characters."""
    if not values:
        return ""
    buckets = min(width, len(values))
    means = []
    for number in range(buckets):
        part = values[number * len(values) // buckets : (number + 1) * len(values) // buckets]
        means.append(sum(part) / len(part))
    low, high = min(means), max(means)
    if high == low:
        return _BARS[3] * buckets
    scale = (len(_BARS) - 1) / (high - low)
    return "".join(_BARS[round((mean - low) * scale)] for mean in means)


def check(settings: Settings) -> int:
    """Print one line per check, ✓ or ✗ with a hint; return 1 if any failed."""
    failed = False

    def line(ok: bool | None, what: str, detail: str) -> None:
        nonlocal failed
        mark = {True: "✓", False: "✗", None: "!"}[ok]
        failed = failed or ok is False
        print(f"{mark} {what}: {detail}")

    line(True, "config", "valid")
    line(*_check_database(settings))
    scheduler_ok, scheduler_text, scheduler = _check_slurm(settings)
    line(scheduler_ok, "slurm", scheduler_text)
    if scheduler is not None:
        line(*_check_comment_flag(scheduler))
    for root in settings.logs.roots:
        readable = os.path.isdir(root) and os.access(root, os.R_OK | os.X_OK)
        line(readable, f"log root {root}", "readable" if readable else "missing or not readable")
    if not settings.logs.roots:
        line(None, "log roots", "none configured; only logs at the jobs' own stdout paths are read")
    line(*_check_nvml())
    return 1 if failed else 0


def _check_database(settings: Settings) -> tuple[bool, str, str]:
    url = masked_url(settings.database_url)
    try:
        repository = Repository.from_url(settings.database_url, settings.database.connect_timeout)
        try:
            current = schema.current_revision(repository.engine)
        finally:
            repository.dispose()
    except HpcsyncError as exc:
        return False, "database", f"{url}: {exc} (is the server up? is database.url right?)"
    head = schema.head_revision()
    if current == head:
        return True, "database", f"{url}, schema {current}"
    return (
        False,
        "database",
        f"{url}, schema {current or 'none'}, want {head} (run `hpcsync db upgrade`)",
    )


def _check_slurm(settings: Settings) -> tuple[bool, str, Any]:
    try:
        scheduler = daemon.open_scheduler(settings)
        version = scheduler.version()
        cluster = daemon.cluster_name(settings, scheduler)
    except HpcsyncError as exc:
        return False, f"{exc} (is slurmctld up? is SLURM_CONF set?)", None
    return True, f"{scheduler.name} backend, Slurm {version}, cluster {cluster}", scheduler


def _check_comment_flag(scheduler: Any) -> tuple[bool | None, str, str]:
    flags: Callable[[], str] | None = getattr(scheduler, "accounting_store_flags", None)
    if flags is None:
        return None, "job comments in sacct", "cannot tell with this backend"
    try:
        value = flags()
    except HpcsyncError as exc:
        return None, "job comments in sacct", f"cannot tell: {exc}"
    if "job_comment" in value:
        return True, "job comments in sacct", "AccountingStoreFlags has job_comment"
    return (
        None,
        "job comments in sacct",
        "AccountingStoreFlags lacks job_comment: jobs purged before a poll lose their tag",
    )


def _check_nvml() -> tuple[bool | None, str, str]:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            count = pynvml.nvmlDeviceGetCount()
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:
        return None, "nvml", f"not available here ({type(exc).__name__}); normal on a login node"
    return True, "nvml", f"{count} GPU(s)"


def _elapsed(row: dict[str, Any]) -> str:
    start, end = row["started_at"], row["ended_at"]
    if start is None:
        return "-"
    seconds = int(((end or datetime.now(UTC)) - start).total_seconds())
    hours, rest = divmod(max(seconds, 0), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def _gpus(row: dict[str, Any]) -> str:
    if not row["num_gpus"]:
        return "-"
    return f"{row['num_gpus']}x{row['gpu_type']}" if row["gpu_type"] else str(row["num_gpus"])


def _text(value: Any) -> str:
    return "-" if value is None else str(value)
