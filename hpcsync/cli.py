"""Command line: parse arguments, call the daemon layer, turn HpcsyncError into a message and exit code."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from hpcsync import __version__
from hpcsync.config import Settings, find_config, load_settings, warn_if_world_readable
from hpcsync.errors import ConfigError, HpcsyncError
from hpcsync.manifest import add_manifest_arguments, manifest_command

if TYPE_CHECKING:
    from hpcsync.sync import CycleStats

log = logging.getLogger("hpcsync")

# sd-daemon priority prefixes, read by journald from a service's stderr.
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}
# `scheme://user:password@`: whatever prints a URL (a driver's error, a library's log line), the
# password never reaches the journal.
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)[^\s@]+@")


class _Formatter(logging.Formatter):
    """Masks URL passwords; under journald prefixes every line with the record's priority."""

    def __init__(self, fmt: str, datefmt: str | None = None, *, journal: bool = False) -> None:
        super().__init__(fmt, datefmt)
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as text: one line per event, a traceback's lines carry its priority."""
        text = _URL_PASSWORD.sub(r"\g<head>***@", super().format(record))
        if not self.journal:
            return text
        prefix = f"<{_PRIORITY.get(record.levelno, 6)}>"
        return "\n".join(prefix + line for line in text.splitlines() or [""])


def setup_logging(level: str) -> None:
    """Log to stderr: sd-daemon prefixes and no timestamps under journald, timestamps elsewhere."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        # journald stamps each line itself; the logger name says which part of hpcsync spoke.
        handler.setFormatter(_Formatter("%(name)s: %(message)s", journal=True))
    else:
        handler.setFormatter(
            _Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))


def _parse_date(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date (use YYYY-MM-DD or YYYY-MM-DDTHH:MM)"
        ) from exc
    return value.astimezone(UTC) if value.tzinfo else value.astimezone().astimezone(UTC)


def _common_options(parser: argparse.ArgumentParser, default: str | None) -> None:
    parser.add_argument(
        "-c",
        "--config",
        default=default,
        help="config file (default: $HPCSYNC_CONFIG, else /etc/hpcsync/config.toml)",
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        default=default,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="override the configured log level",
    )


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser for every command."""
    parser = argparse.ArgumentParser(
        prog="hpcsync", description="Connects Slurm jobs to an experiment tracker's database."
    )
    _common_options(parser, None)
    # Subcommands accept the same options; SUPPRESS keeps them from resetting the top level's.
    common = argparse.ArgumentParser(add_help=False)
    _common_options(common, argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version=f"hpcsync {__version__}")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="what to do"
    )

    commands.add_parser("run", parents=[common], help="run the daemon in the foreground")
    commands.add_parser("sync", parents=[common], help="run one full cycle, then exit")
    commands.add_parser(
        "check", parents=[common], help="validate config and reach every dependency"
    )

    db = commands.add_parser("db", parents=[common], help="database schema commands")
    db_commands = db.add_subparsers(
        dest="db_command", required=True, metavar="ACTION", help="what to do with the schema"
    )
    db_commands.add_parser("upgrade", parents=[common], help="create or migrate the schema")

    backfill = commands.add_parser(
        "backfill", parents=[common], help="import jobs from sacct that ended while no daemon ran"
    )
    backfill.add_argument(
        "--since", required=True, type=_parse_date, help="start date (local time)"
    )
    backfill.add_argument("--until", type=_parse_date, help="end date (default: now)")

    runs = commands.add_parser("runs", parents=[common], help="list runs, newest first")
    runs.add_argument("--experiment", help="only this experiment")
    runs.add_argument(
        "--state", help="only this status (pending, running, completed, failed, cancelled)"
    )
    runs.add_argument("--user", help="only this user's jobs")
    runs.add_argument("--limit", type=int, default=50, help="at most this many runs (default 50)")
    runs.add_argument("--json", action="store_true", help="print JSON only")

    show = commands.add_parser("show", parents=[common], help="show one run")
    show.add_argument("job_id", metavar="JOBID", help="Slurm job id, e.g. 1234 or 1234_7")
    show.add_argument("--json", action="store_true", help="print JSON only")

    sample = commands.add_parser(
        "sample", parents=[common], help="sample this job's GPUs with NVML (run inside a job)"
    )
    sample.add_argument("--interval", type=float, help="seconds per written sample (default 30)")
    sample.add_argument("--output", help="output path; %%j job id and %%N node are expanded")
    manifest = commands.add_parser(
        "manifest",
        parents=[common],
        help="write this job's run manifest: params, git SHA, seed (run inside a job)",
    )
    add_manifest_arguments(manifest)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "sample":
        setup_logging(args.log_level or "INFO")
        return _sample(args)
    if args.command == "manifest":
        setup_logging(args.log_level or "INFO")
        return manifest_command(args)
    config_path = find_config(args.config)
    try:
        settings = load_settings(config_path)
    except ConfigError as exc:
        _error(str(exc))
        return exc.exit_code
    setup_logging(args.log_level or settings.log_level)
    if warning := warn_if_world_readable(config_path):
        log.warning("%s", warning)
    try:
        return _dispatch(args, settings)
    except HpcsyncError as exc:
        _error(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def _backfill_progress(done: int, total: int, stats: CycleStats) -> None:
    if total > 1 and sys.stderr.isatty():
        end = "\n" if done == total else ""
        print(
            f"\rbackfill: {done}/{total} days, {stats.history} jobs, {stats.new} new runs",
            end=end,
            file=sys.stderr,
            flush=True,
        )


def _error(message: str) -> None:
    # Under systemd the final error carries the err priority, like the daemon's own lines.
    prefix = "<3>" if os.environ.get("JOURNAL_STREAM") else ""
    print(f"{prefix}hpcsync: {message}", file=sys.stderr)


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    from hpcsync import daemon, views

    if args.command == "run":
        return daemon.Daemon(settings, config=args.config, fixed_log_level=args.log_level).run()
    if args.command == "sync":
        stats, ingested = daemon.sync_once(settings)
        log.info("%s; %s", stats.summary(), ingested.summary())
        return 0
    if args.command == "db":
        repository = daemon.open_repository(settings)
        repository.dispose()
        print("schema is up to date")
        return 0
    if args.command == "check":
        return views.check(settings)
    if args.command == "backfill":
        stats = daemon.backfill(
            settings, args.since, args.until or datetime.now(UTC), progress=_backfill_progress
        )
        print(
            f"backfill: {stats.history} jobs in sacct, {stats.new} new runs, {stats.changed} changed"
        )
        return 0
    if args.command == "runs":
        return views.list_runs(settings, args)
    if args.command == "show":
        return views.show_run(settings, args.job_id, as_json=args.json)
    raise AssertionError(args.command)


def _sample(args: argparse.Namespace) -> int:
    from hpcsync.gpu.sampler import DEFAULT_INTERVAL, run_sampler

    try:
        return run_sampler(
            interval=args.interval or DEFAULT_INTERVAL, output=args.output, env=os.environ
        )
    except HpcsyncError as exc:
        _error(str(exc))
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
