"""The real single-node Slurm of `scripts/slurm-testbed`, as a session fixture.

Every test under tests/cluster/ is marked `cluster`. Without root, apt-get or a cluster that
starts, those tests are skipped; with HPCSYNC_REQUIRE_SLURM=1 they fail instead.
The cluster is left running after the session: the next session reuses it in well under a second.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parents[2]
TESTBED = REPO / "scripts" / "slurm-testbed"
HERE = Path(__file__).resolve().parent
MIN_JOB_AGE = 30
START_TIMEOUT = 900.0
"""Seconds for `slurm-testbed start`; it may have to apt-get install the packages first."""
COMMAND_TIMEOUT = 30.0
POLL_INTERVAL = 0.2

TERMINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "OUT_OF_MEMORY",
        "NODE_FAIL",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test collected from tests/cluster/ with `cluster`."""
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.cluster)


class SlurmCluster:
    """Handle on the running test cluster: its config, environment and small job helpers."""

    def __init__(self, conf: Path, directory: Path, env: dict[str, str]) -> None:
        self.conf = conf
        self.dir = directory
        self.env = env
        self.jobs_dir = directory / "jobs"

    def run(
        self,
        *cmd: str,
        input: str | None = None,
        cwd: Path | None = None,
        check: bool = False,
        timeout: float = COMMAND_TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        """Return the finished command, run with SLURM_CONF set and, by default, in the jobs dir."""
        return subprocess.run(
            list(cmd),
            input=input,
            cwd=cwd or self.jobs_dir,
            env=self.env,
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    def sbatch(self, *args: str, script: str) -> str:
        """Return the id of a batch job submitted with `script` on stdin; raise on refusal."""
        if not script.startswith("#!"):
            script = "#!/bin/bash\n" + script
        result = self.run("sbatch", "--parsable", *args, input=script)
        if result.returncode != 0:
            raise RuntimeError(f"sbatch {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout.strip().split(";", 1)[0]

    def scancel(self, job_id: str, *args: str) -> None:
        """Cancel a job (extra scancel options allowed); raise when scancel refuses."""
        self.run("scancel", *args, job_id, check=True)

    def state(self, job_id: str) -> str | None:
        """Return the job's state word from squeue, else from sacct; None when neither knows it."""
        result = self.run("squeue", "-h", "-t", "all", "-j", job_id, "-O", "State:|")
        if result.returncode == 0:
            words = [line.strip().rstrip("|") for line in result.stdout.splitlines()]
            if words and words[0]:
                return words[0]
        result = self.run("sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State")
        if result.returncode == 0 and result.stdout.strip():
            # `CANCELLED by 0` -> `CANCELLED`
            return result.stdout.splitlines()[0].split(" ", 1)[0]
        return None

    def wait_state(self, job_id: str, states: str | Iterable[str], timeout: float = 60.0) -> str:
        """Return the job's state once it is one of `states`.

        Raises AssertionError on timeout, or at once when the job ends in a state not wanted.
        """
        wanted = {states} if isinstance(states, str) else set(states)
        deadline = time.monotonic() + timeout
        state = None
        while True:
            state = self.state(job_id)
            if state in wanted:
                return state
            if state in TERMINAL_STATES:
                raise AssertionError(f"job {job_id} ended {state}, expected {sorted(wanted)}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"job {job_id} still {state} after {timeout} s, expected {sorted(wanted)}"
                )
            time.sleep(POLL_INTERVAL)

    def sacct(self, job_id: str, *fields: str, timeout: float = 15.0) -> dict[str, str]:
        """Return the job's own accounting line (`-X`) as field -> value, waiting for it to appear.

        Accounting lags the controller by a moment; raises AssertionError after `timeout`.
        """
        deadline = time.monotonic() + timeout
        while True:
            result = self.run(
                "sacct", "-n", "-X", "-P", "-j", job_id, "-o", ",".join(("JobID", *fields))
            )
            lines = result.stdout.splitlines() if result.returncode == 0 else []
            if lines:
                values = lines[0].split("|", len(fields))
                return dict(zip(fields, values[1:], strict=True))
            if time.monotonic() > deadline:
                raise AssertionError(f"sacct has no record of job {job_id}: {result.stderr}")
            time.sleep(POLL_INTERVAL)

    def requeue(self, job_id: str, timeout: float = 30.0) -> None:
        """Requeue a running job and return once Slurm holds it back (PENDING, BeginTime)."""
        self.run("scontrol", "requeue", job_id, check=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.run("squeue", "-h", "-j", job_id, "-O", "State:|,Reason:|").stdout
            if out.strip() == "PENDING|BeginTime|":
                return
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} never showed PENDING/BeginTime after requeue")

    def release(self, job_id: str) -> None:
        """Make a requeued job eligible now instead of after Slurm's ~2 min delay."""
        # slurmd refuses a launch in the same second as the kill ("already killed").
        time.sleep(2.5)
        self.run("scontrol", "update", f"JobId={job_id}", "StartTime=now", check=True)

    def workdir(self, name: str) -> Path:
        """Return a fresh, empty directory under the testbed that jobs can write to."""
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.jobs_dir))
        path.chmod(0o777)
        return path


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("HPCSYNC_REQUIRE_SLURM") == "1":
        pytest.fail(f"Slurm test cluster required but unavailable: {reason}", pytrace=False)
    pytest.skip(f"Slurm test cluster unavailable: {reason}")


def _testbed_env() -> dict[str, str]:
    """Return the variables `slurm-testbed env` exports."""
    result = subprocess.run(
        [str(TESTBED), "env"], capture_output=True, text=True, check=True, timeout=COMMAND_TIMEOUT
    )
    values: dict[str, str] = {}
    for line in result.stdout.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        values[name] = value
    return values


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """Yield the running test cluster, starting it (MinJobAge 30) if needed."""
    if os.geteuid() != 0:
        _unavailable("needs root")
    if shutil.which("apt-get") is None:
        _unavailable("needs apt-get (Debian or Ubuntu)")
    try:
        result = subprocess.run(
            [str(TESTBED), "start", "--min-job-age", str(MIN_JOB_AGE)],
            check=False,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        _unavailable(f"slurm-testbed start took over {START_TIMEOUT:.0f} s")
    if result.returncode != 0:
        _unavailable(f"slurm-testbed start failed:\n{result.stderr.strip()}")
    exported = _testbed_env()
    env = {**os.environ, **exported}
    yield SlurmCluster(
        conf=Path(exported["SLURM_CONF"]),
        directory=Path(exported["HPCSYNC_TESTBED_DIR"]),
        env=env,
    )
