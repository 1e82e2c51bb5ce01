"""Benchmark 4, footprint: RSS and idle CPU of `hpcsync run` with 10,000 runs and 2,000 live files.

    python -m bench.footprint [--jobs 10000] [--live 2000] [--seconds 60] [--observers auto,polling]

Fake `squeue`/`sacct`/`sstat`/`scontrol` on PATH print generated output (bench/slurm_output.py):
`--jobs` tagged jobs, the first `--live` of them running, each with its own log file (a few
metric lines) that the run's StdOut names. `hpcsync run` starts with the default intervals
(poll every 30 s, logs every 5 s, sstat every 300 s) on a fresh SQLite database. Nothing
changes after its first poll and its first read of every file. Once the watcher's first
rescan is past too (65 s after start), the benchmark reads /proc/PID/stat over `--seconds`:
the daemon's own CPU, and its children's (the fake programs) apart. RSS is VmRSS at the end;
the peak (VmHWM) includes the first cycle, which records 10,000 runs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import daemon
from bench.common import Figure, profile
from bench.slurm_output import install_programs, program_calls, write_outputs

WARM_UP = 65.0
"""Seconds after start before the idle window opens."""


def idle(
    jobs: int, live: int, seconds: float, observer: str, warm_up: float = WARM_UP
) -> dict[str, Any]:
    """Start the daemon on generated output; return its RSS and CPU while idle."""
    with tempfile.TemporaryDirectory(prefix="hpcsync-bench-foot-", dir="/var/tmp") as name:
        directory = Path(name)
        log_dir = directory / "logs"
        log_dir.mkdir()
        made = write_outputs(directory, jobs, running=live, log_dir=str(log_dir))
        for job in made[:live]:
            (log_dir / f"slurm-{job.job_id}.out").write_text(
                "".join(f"step={step} loss={1 / (step + 1):.4f}\n" for step in range(5))
            )
        programs = install_programs(directory)
        env = dict(os.environ)
        env["PATH"] = str(Path(programs["squeue"]).parent) + os.pathsep + env.get("PATH", "")
        env.pop("SLURM_CONF", None)
        config = daemon.write_config(
            directory / "config.toml",
            {
                "": {"state_dir": str(directory / "state"), "cluster_name": "bench"},
                "database": {"url": f"sqlite:///{directory / 'bench.db'}"},
                "slurm": {"backend": "cli"},
                "logs": {"observer": observer},
            },
        )
        output = directory / "daemon.log"
        began = time.monotonic()
        process = daemon.start(config, env, output)
        try:
            if not daemon.wait_log(output, "polled", 300, process):
                raise RuntimeError("hpcsync run did not poll:\n" + output.read_text()[-3000:])
            ready = time.monotonic() - began
            # Settle first: the first logs tick reads every file, and the watcher's first
            # rescan (60 s after start) stats them all and reads each once more.
            time.sleep(max(8.0, warm_up - (time.monotonic() - began)))
            calls_before = len(program_calls(directory))
            own, children = daemon.cpu_seconds(process.pid)
            start = time.monotonic()
            profile(process.pid, seconds, f"footprint-{observer}")
            own_after, children_after = daemon.cpu_seconds(process.pid)
            window = time.monotonic() - start
            memory = daemon.memory_mb(process.pid)
            calls = program_calls(directory)[calls_before:]
        finally:
            code = daemon.stop(process)
        text = output.read_text(errors="replace")
        if code not in (0, None):
            raise RuntimeError(f"hpcsync run exited {code}:\n{text[-3000:]}")
        polls = [line for line in text.splitlines() if "polled" in line]
    result = {
        "startup_s": ready,
        "cpu_percent": 100 * (own_after - own) / window,
        "children_cpu_percent": 100 * (children_after - children) / window,
        "rss_mb": memory["VmRSS"],
        "peak_rss_mb": memory["VmHWM"],
        "squeue_calls": calls.count("squeue"),
        "sacct_calls": calls.count("sacct"),
        "window_s": window,
        "last_poll": polls[-1].split("polled", 1)[1].strip() if polls else "",
    }
    print(
        f"  {observer:8s}: first poll after {ready:.1f} s; idle {result['cpu_percent']:.2f}% "
        f"of a core (+{result['children_cpu_percent']:.2f}% in fake squeue/sacct), "
        f"RSS {memory['VmRSS']:.0f} MB (peak {memory['VmHWM']:.0f} MB), "
        f"{result['squeue_calls']} squeue in {window:.0f} s; last poll: {result['last_poll']}",
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> list[Figure]:
    """Run the footprint benchmark; return its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--live", type=int, default=2_000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--observers", default="auto,polling")
    parser.add_argument("--warm-up", type=float, default=WARM_UP, help="seconds before measuring")
    args = parser.parse_args(argv)
    print(
        f"footprint: hpcsync run, {args.jobs:,} runs, {args.live:,} live files, "
        f"{args.seconds:g} s idle",
        flush=True,
    )
    figures: list[Figure] = []
    for observer in args.observers.split(","):
        result = idle(args.jobs, args.live, args.seconds, observer, args.warm_up)
        figures += [
            Figure(
                f"daemon RSS, observer {observer}",
                result["rss_mb"],
                "MB",
                "<= 100",
                f"peak {result['peak_rss_mb']:.0f} MB during the first cycle",
            ),
            Figure(
                f"daemon idle CPU, observer {observer}",
                result["cpu_percent"],
                "% of a core",
                "<= 1",
                f"over {result['window_s']:.0f} s, {result['squeue_calls']} polls; fake "
                f"squeue/sacct {result['children_cpu_percent']:.2f}% more",
            ),
        ]
    return figures


if __name__ == "__main__":
    from bench.common import figures_table

    print(figures_table(main()))
