"""Run every benchmark (or those named) and print their figures beside the targets.

    bench/run                      # creates the benchmark venv (with MLflow), then this
    python -m bench [ingest] [polling] [freshness] [footprint] [--quick]

Figures are printed as one Markdown table and written to
/var/tmp/hpcsync-bench/latest.md and latest.json. They are measurements, not tests: nothing
here fails on a missed target, and none of it runs in the test suite.
"""

from __future__ import annotations

import argparse
import platform
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench import footprint, freshness, ingest, polling
from bench.common import Figure, figures_table, save_figures

OUTPUT = Path("/var/tmp/hpcsync-bench")
BENCHMARKS: dict[str, Callable[[list[str]], list[Figure]]] = {
    "ingest": ingest.main,
    "polling": polling.main,
    "freshness": freshness.main,
    "footprint": footprint.main,
}
QUICK = {
    "ingest": ["--points", "200000", "--mlflow-points", "20000", "--repeat", "1"],
    "polling": ["--jobs", "2000", "--held", "200", "--cycles", "1"],
    "freshness": ["--trials", "2", "--interval", "2", "--poll", "2"],
    "footprint": [
        *("--jobs", "2000", "--live", "400", "--seconds", "10"),
        *("--observers", "auto", "--warm-up", "10"),
    ],
}


def main() -> None:
    """Run the chosen benchmarks one after the other; print and save the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(BENCHMARKS))
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the set runs")
    args = parser.parse_args()
    unknown = set(args.names) - set(BENCHMARKS)
    if unknown:
        parser.error(
            f"no benchmark {', '.join(sorted(unknown))}; choose from {', '.join(BENCHMARKS)}"
        )
    names = args.names or list(BENCHMARKS)
    figures: list[Figure] = []
    began = time.monotonic()
    failed: list[str] = []
    for name in names:
        start = time.monotonic()
        try:
            figures += BENCHMARKS[name](QUICK[name] if args.quick else [])
        except Exception:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            failed.append(name)
        print(f"{name}: {time.monotonic() - start:.0f} s\n", flush=True)
    table = figures_table(figures)
    header = (
        f"hpcsync benchmarks, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
        f"{len(names)} benchmark(s) in {time.monotonic() - began:.0f} s"
        + (" (--quick: sizes below the targets' own)" if args.quick else "")
        + (f"; FAILED: {', '.join(failed)}" if failed else "")
    )
    print(header)
    print(table)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / "latest.md").write_text(header + "\n\n" + table + "\n")
    save_figures(OUTPUT / "latest.json", figures)


if __name__ == "__main__":
    main()
