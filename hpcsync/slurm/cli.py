"""The Scheduler that runs Slurm's own squeue, sacct and scontrol."""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from hpcsync.errors import SchedulerUnavailable
from hpcsync.models import Job
from hpcsync.slurm import formats
from hpcsync.slurm.parsers import (
    SqueueLines,
    parse_cluster_name,
    parse_config_value,
    parse_sacct,
    parse_squeue_reusing,
    parse_version,
    selected_by,
)

logger = logging.getLogger(__name__)

# With a state list sacct also returns jobs that ended in the window without ever becoming
# eligible (held, then cancelled), which its plain window omits (fixtures README, fact 5).
WINDOW_STATES = "PD,R,S,CD,CA,F,TO,NF,PR,BF,DL,OOM,RQ,RS,RV"
"""sacct `--state` for a window query: every state."""

_SLURM_TIME = "%Y-%m-%dT%H:%M:%S"


def local_timezone() -> tzinfo:
    """Return the zone Slurm's clients print times in: $TZ, else /etc/localtime, else UTC."""
    name = os.environ.get("TZ", "").lstrip(":")
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            logger.warning("TZ=%s is not a known time zone; reading /etc/localtime", name)
    localtime = Path("/etc/localtime")
    if localtime.exists():
        with localtime.open("rb") as handle:
            return ZoneInfo.from_file(handle, key="localtime")
    return UTC


class CliScheduler:
    """Runs squeue, sacct and scontrol found on PATH (SLURM_CONF passes through) with a timeout."""

    name = "cli"

    def __init__(
        self,
        *,
        timeout: float = 30.0,
        squeue: str = "squeue",
        sacct: str = "sacct",
        scontrol: str = "scontrol",
        tz: tzinfo | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.timeout = timeout
        self.programs = {"squeue": squeue, "sacct": sacct, "scontrol": scontrol}
        self.tz = tz if tz is not None else local_timezone()
        # A user's SLURM_TIME_FORMAT (e.g. `relative`) would change every time we parse.
        self.env = {**(os.environ if env is None else env), "SLURM_TIME_FORMAT": "standard"}
        self.calls: Counter[str] = Counter()
        self._config: str | None = None
        self._squeue_lines: SqueueLines = {}

    def cluster_name(self) -> str:
        """Return ClusterName from `scontrol show config` (asked once, then remembered)."""
        return parse_cluster_name(self._show_config())

    def accounting_store_flags(self) -> str:
        """Return AccountingStoreFlags (`job_comment` makes sacct keep comments)."""
        return parse_config_value(self._show_config(), "AccountingStoreFlags")

    def version(self) -> str:
        """Return the controller's SLURM_VERSION from `scontrol show config`."""
        return parse_version(self._show_config())

    def list_jobs(self) -> list[Job]:
        """Return every job and array task the controller holds, from one squeue call."""
        text = self._run("squeue", ["-a", "-r", "-t", "all", "-h", "-O", formats.squeue_format()])
        jobs, self._squeue_lines = parse_squeue_reusing(text, self.tz, self._squeue_lines)
        return jobs

    def job_history(self, job_ids: Sequence[str]) -> list[Job]:
        """Return sacct's records of these jobs (`10` selects all tasks of array 10), in one call."""
        if not job_ids:
            return []
        wanted = set(job_ids)
        # `-j 4_1` misses a task still inside its array's pending record (`4_[1-2]`), so the
        # array's own id is asked too and the answer trimmed to what was wanted.
        arrays = [job_id.partition("_")[0] for job_id in job_ids if "_" in job_id]
        ids = ",".join(dict.fromkeys([*job_ids, *arrays]))
        text = self._run("sacct", [*self._sacct_args(), "-j", ids])
        return [job for job in parse_sacct(text, self.tz) if selected_by(job, wanted)]

    def jobs_between(self, start: datetime, end: datetime) -> list[Job]:
        """Return sacct's records of jobs that were pending, ran or ended in [start, end]."""
        window = [
            "-S",
            self._slurm_time(start),
            "-E",
            self._slurm_time(end),
            f"--state={WINDOW_STATES}",
        ]
        return parse_sacct(self._run("sacct", [*self._sacct_args(), *window]), self.tz)

    def _sacct_args(self) -> list[str]:
        """Return the arguments every sacct call shares."""
        return ["-a", "--parsable2", "--noheader", f"--format={formats.sacct_format()}"]

    def _slurm_time(self, moment: datetime) -> str:
        """Return an aware time as the zone-less local time sacct reads."""
        if moment.tzinfo is None:
            raise ValueError("jobs_between needs timezone-aware datetimes")
        return moment.astimezone(self.tz).strftime(_SLURM_TIME)

    def _show_config(self) -> str:
        """Return `scontrol show config` output, asking the controller only the first time."""
        if self._config is None:
            self._config = self._run("scontrol", ["show", "config"])
        return self._config

    def _run(self, program: str, args: Sequence[str]) -> str:
        """Run one Slurm client program and return its stdout; raise SchedulerUnavailable on failure."""
        argv = [self.programs[program], *args]
        self.calls[program] += 1
        logger.debug("running %s", shlex.join(argv))
        started = time.monotonic()
        try:
            result = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                encoding="utf-8",
                errors="replace",
                timeout=self.timeout,
                env=self.env,
                check=False,
            )
        except FileNotFoundError:
            raise SchedulerUnavailable(f"{program}: {argv[0]} not found on PATH") from None
        except subprocess.TimeoutExpired:
            raise SchedulerUnavailable(
                f"{program}: no answer within {self.timeout:g} s (timeout)"
            ) from None
        except OSError as exc:
            raise SchedulerUnavailable(f"{program}: could not run {argv[0]}: {exc}") from exc
        logger.debug(
            "%s exited %d in %.2f s", program, result.returncode, time.monotonic() - started
        )
        if result.returncode != 0:
            first = next((line for line in result.stderr.splitlines() if line.strip()), "")
            raise SchedulerUnavailable(
                f"{program} exited with status {result.returncode}: {first.strip() or 'no message'}"
            )
        return result.stdout
