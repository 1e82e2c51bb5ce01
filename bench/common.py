"""What every benchmark shares: figures with their targets, repeats, databases, child processes."""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POSTGRES_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
RESULT_PREFIX = "BENCH-RESULT "


@dataclass
class Figure:
    """One measured figure, beside its target when it has one."""

    name: str
    value: float
    unit: str
    target: str = ""
    """The target as text (`>= 150000`), empty for figures shown for context."""
    note: str = ""

    @property
    def verdict(self) -> str:
        """Return `met`, `missed`, or empty when the figure has no target."""
        if not self.target:
            return ""
        op, _, bound = self.target.partition(" ")
        limit = float(bound)
        ok = self.value >= limit if op == ">=" else self.value <= limit
        return "met" if ok else "MISSED"


def median_of(values: Sequence[float]) -> float:
    """Return the median (the middle of 3 repeats)."""
    return statistics.median(values)


def spread(values: Sequence[float], digits: int = 0) -> str:
    """Return the repeats as `a / b / c`, for the notes."""
    return " / ".join(f"{value:,.{digits}f}" for value in values)


def peak_rss_mb() -> float:
    """Return this process's peak resident set size in MB (VmHWM).

    Not `ru_maxrss`: Linux carries that across exec, so a child would report its parent's peak.
    """
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    """Return this process's user + system CPU time."""
    return time.process_time()


def children_cpu_seconds() -> float:
    """Return the user + system CPU time of this process's waited-for children."""
    times = os.times()
    return times.children_user + times.children_system


def postgres_url(database: str) -> str | None:
    """Return the URL of a fresh, empty PostgreSQL database, or None when the server is down."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    server = os.environ.get("HPCSYNC_TEST_POSTGRES_URL", POSTGRES_SERVER + "/postgres")
    server = server.rsplit("/", 1)[0]
    try:
        admin = create_engine(server + "/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
            connection.execute(text(f"CREATE DATABASE {database}"))
        admin.dispose()
    except OperationalError as exc:
        print(f"  postgresql: skipped, not reachable ({str(exc).splitlines()[0]})", flush=True)
        return None
    return f"{server}/{database}"


def drop_postgres(database: str) -> None:
    """Drop a benchmark database; quiet when the server is down."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    server = os.environ.get("HPCSYNC_TEST_POSTGRES_URL", POSTGRES_SERVER + "/postgres")
    try:
        admin = create_engine(server.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        admin.dispose()
    except OperationalError:
        pass


def report(result: dict[str, object]) -> None:
    """Print a child's result as one machine-readable line (the parent collects it)."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_child(module: str, args: Sequence[str], timeout: float = 600) -> dict[str, object]:
    """Run `python -m module args` in a fresh process; return the result it reported."""
    command = [sys.executable, "-m", module, *args]
    done = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result: dict[str, object] = json.loads(line[len(RESULT_PREFIX) :])
            return result
    tail = (done.stderr or done.stdout).strip().splitlines()[-15:]
    raise RuntimeError(f"{module} {' '.join(args)} failed ({done.returncode}):\n" + "\n".join(tail))


def repeat(times: int, measure: Callable[[int], dict[str, float]]) -> list[dict[str, float]]:
    """Call measure(i) `times` times and return the results in order."""
    return [measure(index) for index in range(times)]


def figures_table(figures: Sequence[Figure]) -> str:
    """Return the figures as a Markdown table."""
    lines = ["| figure | value | target | verdict | note |", "|---|---|---|---|---|"]
    for figure in figures:
        value = f"{figure.value:,.2f}" if abs(figure.value) < 100 else f"{figure.value:,.0f}"
        target = figure.target.replace(">=", "≥").replace("<=", "≤")
        lines.append(
            f"| {figure.name} | {value} {figure.unit} | {target} | {figure.verdict} | {figure.note} |"
        )
    return "\n".join(lines)


def save_figures(path: Path, figures: Sequence[Figure]) -> None:
    """Write the figures as JSON (the latest run's record)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(figure) for figure in figures], indent=1) + "\n")


def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    """Poll predicate until it is true or timeout seconds pass; return whether it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def profile(pid: int, seconds: float, name: str) -> None:
    """Wait `seconds`; with $BENCH_PROFILE set to a directory, record py-spy samples meanwhile.

    The samples go to `<dir>/<name>.txt` as collapsed stacks (py-spy's `raw` format).
    """
    directory = os.environ.get("BENCH_PROFILE")
    spy = Path(sys.executable).with_name("py-spy")
    if not directory or not spy.exists():
        time.sleep(seconds)
        return
    Path(directory).mkdir(parents=True, exist_ok=True)
    output = Path(directory) / f"{name}.txt"
    command = [str(spy), "record", "-p", str(pid), "-d", str(round(seconds)), "-r", "200"]
    subprocess.run([*command, "-f", "raw", "-o", str(output)], capture_output=True, check=False)
    print(f"  profile of {name}: {output}", flush=True)
