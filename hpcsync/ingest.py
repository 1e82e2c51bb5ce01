"""Training metrics and GPU samples from the files of live runs, into the database exactly once.

Which files a run has is decided in ingest_files.py (StdOut, StdErr, GPU sample files and the
run manifest beside them, files in log roots); sample lines and the GPU summary in
ingest_gpu.py; run manifests (read whole, no byte cursor) in ingest_manifest.py.
A path is registered once per run, by its real path (StdOut and StdErr are often one file).
Roots are listed when a run is first tracked, every `root_scan_seconds` after, and at its end.
Files are registered once the job has left PENDING (a pending job has written nothing).

Exactly once. Each file has a cursor row (`log_cursors`): offset, file identity, fingerprint,
the per-name step counters and the parser's stream state at that offset. The points parsed
from a read, the GPUs named by a sample file's header lines (`run_gpus`) and the cursor after
them commit in one transaction; a failure before the commit rolls all back and the same bytes
are read again into the same keys, a failure after it never reads them again. In-memory state
changes only after a commit.

Steps come from the line (explicit key or framework counter); otherwise from a per-name counter
kept per file with its cursor, so a re-read gives the same steps. A truncated, rewritten or
replaced file (a requeued job's restart) is read again from byte 0 with fresh counters and
parser state: repeated steps overwrite, the newer value wins, and nothing is doubled.
Timestamps: the line's own (naive means local time), else the time of reading; stored in UTC.
Hostile files (a symlink, a FIFO, a file not the job user's, outside roots and output directories;
see logs/safe_open.py) are refused: counted, logged once per file and reason, never read.
A file that failed (refused, or any error but the database's) is retried after a growing wait
(RETRY_FIRST_SECONDS, doubling up to RETRY_MAX_SECONDS), or at once when the watcher sees it
change.
When a run ends (`finish`), its `gpu_util_mean` is written once its files are read to the end.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo

from hpcsync.db.metric_store import (
    CursorRow,
    Row,
    RunGpu,
    load_cursors,
    save_cursor,
    upsert_rows,
    upsert_run_gpus,
)
from hpcsync.db.repository import Repository
from hpcsync.errors import StorageError
from hpcsync.ingest_commit import ChunkCommitter
from hpcsync.ingest_files import (
    FileKind,
    failure_reason,
    file_policy,
    gives_up,
    kind_of,
    manifest_files,
    resolve_directory,
    root_manifests,
    run_files,
    written_since,
)
from hpcsync.ingest_gpu import PendingSummaries, sample_rows
from hpcsync.ingest_manifest import read_manifest
from hpcsync.logs.lines import clean
from hpcsync.logs.parsers import MetricParser, ParsedValue, StreamState
from hpcsync.logs.safe_open import FilePolicy, RefusedFile
from hpcsync.logs.tailer import (
    DEFAULT_MAX_LINE_BYTES,
    DEFAULT_MAX_READ_BYTES,
    Cursor,
    TailRead,
    read_lines,
)
from hpcsync.logs.watcher import ObserverKind, Watcher, files_in_root
from hpcsync.models import JobState, Run

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
MAX_NAME = 255
MAX_STEP = 2**63 - 1
RETRY_FIRST_SECONDS = 10.0
RETRY_MAX_SECONDS = 300.0
"""A file that failed to read (refused, permission denied, ...) is retried after 10 s, then
after twice the last wait, up to 5 minutes; a change the watcher reports retries it at once."""


def utc_now() -> datetime:
    """Return the current time, timezone-aware UTC."""
    return datetime.now(UTC)


@dataclass
class IngestStats:
    """What one pass read and wrote."""

    files: int = 0
    lines: int = 0
    points: int = 0
    skipped_lines: int = 0
    restarts: int = 0
    failures: int = 0
    refused: int = 0
    """Of the failures, files refused as unsafe (never retried once their run has ended)."""
    seconds: float = 0.0

    def add(self, other: IngestStats) -> None:
        """Add another pass's counts to these."""
        for item in dataclasses.fields(self):
            setattr(self, item.name, getattr(self, item.name) + getattr(other, item.name))

    def summary(self) -> str:
        """Return the one-line INFO summary."""
        return (
            f"read {self.files} files, {self.lines} lines, {self.points} points, "
            f"{self.skipped_lines} over-long lines skipped, {self.restarts} restarted, "
            f"{self.failures} failed ({self.refused} refused), {self.seconds:.2f} s"
        )


@dataclass
class _File:
    run_id: int
    job_id: str
    path: str
    kind: FileKind
    cursor: CursorRow


class LogIngester:
    """Reads the registered files of live runs and writes their metrics; see the module rules."""

    max_read_bytes = DEFAULT_MAX_READ_BYTES
    """The bytes of one chunk: parsed, then committed with the cursor after it."""

    def __init__(
        self,
        repository: Repository,
        *,
        roots: Sequence[str] = (),
        observer: ObserverKind = "auto",
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        patterns: Sequence[str] = (),
        clock: Clock = utc_now,
        root_scan_seconds: float = 60.0,
        local_timezone: tzinfo | None = None,
        watcher: Watcher | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        """`on_change` is called from the inotify thread when a watched file changes."""
        self.repository = repository
        self.roots = [os.path.abspath(root) for root in roots]
        self.max_line_bytes = max_line_bytes
        self.clock = clock
        self.root_scan_seconds = root_scan_seconds
        self.local_timezone = local_timezone
        self.parser = MetricParser(patterns)
        self.watcher = watcher or Watcher(observer, on_change=on_change)
        self._runs: dict[int, Run] = {}
        self._files: dict[tuple[int, str], _File] = {}
        self._by_path: dict[str, set[tuple[int, str]]] = {}
        self._retry: set[tuple[int, str]] = set()
        self._failing: dict[tuple[int, str], str] = {}  # key -> reason last logged
        self._retry_at: dict[tuple[int, str], tuple[datetime, float]] = {}  # key -> (when, wait)
        self._last_root_scan: datetime | None = None
        self._named: dict[int, tuple[object, ...]] = {}
        self._summaries = PendingSummaries(repository)
        self._lock = threading.RLock()
        self._committer = ChunkCommitter()

    @property
    def files(self) -> list[tuple[int, str, FileKind]]:
        """Return the registered files as (run id, path, kind)."""
        return [(f.run_id, f.path, f.kind) for f in self._files.values()]

    def track(self, runs: Sequence[Run]) -> None:
        """Register the files of these live runs (those that have started); raises StorageError."""
        with self._lock:
            fresh = [
                run
                for run in runs
                if run.id is not None
                and run.id not in self._runs
                and run.job.state is not JobState.PENDING
            ]
            if fresh:
                self._register(fresh)
            now = self.clock()
            due = self._last_root_scan is None or (
                (now - self._last_root_scan).total_seconds() >= self.root_scan_seconds
            )
            if self._runs and (fresh or due):
                self._last_root_scan = now
                self._scan_roots(list(self._runs.values()))
            for run in runs:
                if run.id is not None and run.id in self._runs:
                    self._update(run)

    def ingest(self) -> IngestStats:
        """Read the registered files that changed; raises StorageError if the database is down."""
        with self._lock:
            now = self.clock()
            keys = {key for key in self._retry if self._due(key, now)}
            for path in self.watcher.changed():
                keys.update(self._by_path.get(path, ()))
            stats = self._read_all(sorted(keys), final=False)
            self._summarise()
            return stats

    def finish(self, runs: Sequence[Run]) -> IngestStats:
        """Read all of these ended runs' files to their end once, then forget them."""
        ended = {run.id: run for run in runs if run.id is not None}
        if not ended:
            return IngestStats()
        with self._lock:
            fresh = [run for run_id, run in ended.items() if run_id not in self._runs]
            if fresh:
                self._register(fresh)
            for run in ended.values():
                self._update(run)
            self._scan_roots(list(ended.values()))
            keys = sorted(key for key in self._files if key[0] in ended)
            self._summaries.runs.update(ended)
            stats = self._read_all(keys, final=True)
            for key in keys:
                if key not in self._retry:
                    self._forget(key)
            for run_id in ended.keys() - {key[0] for key in self._files}:
                self._runs.pop(run_id, None)
                self._named.pop(run_id, None)
            self._summarise()
            return stats

    def follow(self, live: Sequence[Run], ended: Sequence[Run] = ()) -> IngestStats:
        """Track the live runs, finish the ended ones (and tracked runs no longer live), ingest."""
        with self._lock:
            live_ids = {run.id for run in live}
            ended_ids = {run.id for run in ended}
            gone = [
                run
                for run_id, run in self._runs.items()
                if run_id not in live_ids and run_id not in ended_ids
            ]
            stats = self.finish([*ended, *gone])
            self.track(live)
            stats.add(self.ingest())
            return stats

    def close(self) -> None:
        """Stop watching and stop the writer thread."""
        self.watcher.close()
        self._committer.close()

    def reconfigure(
        self,
        *,
        roots: Sequence[str],
        observer: ObserverKind,
        max_line_bytes: int,
        patterns: Sequence[str],
    ) -> None:
        """Swap roots, observer, line limit and patterns; files and cursors stay; raises ConfigError."""
        parser = MetricParser(patterns)  # raises before anything changes
        with self._lock:
            self.roots = [os.path.abspath(root) for root in roots]
            self.max_line_bytes = max_line_bytes
            self.parser = parser
            self._last_root_scan = None  # list the new roots at the next pass
            if observer == self.watcher.observer:
                return
            old = self.watcher
            self.watcher = Watcher(
                observer,
                rescan_seconds=old.rescan_seconds,
                monotonic=old.monotonic,
                on_change=old.on_change,
            )
            for path in self._by_path:
                self.watcher.add(path)  # counts as changed: read again from its cursor
            old.close()

    # -- registry ---------------------------------------------------------------------------

    def _register(self, runs: Sequence[Run]) -> None:
        with self.repository.atomic() as connection:
            stored = load_cursors(connection, [run.id for run in runs if run.id is not None])
        for run in runs:
            assert run.id is not None
            self._runs[run.id] = run
        for (run_id, path), cursor in stored.items():
            run = self._runs[run_id]
            self._add(run, path, kind_of(path), cursor)

    def _update(self, run: Run) -> None:
        """Keep the newest record of a registered run; register the files it names if changed."""
        assert run.id is not None
        self._runs[run.id] = run
        job = run.job
        named = (job.stdout_path, job.stderr_path, job.work_dir, job.node_list, job.num_gpus)
        if self._named.get(run.id) != named:
            self._named[run.id] = named
            self._add_files(run, [*run_files(run), *manifest_files(run)])

    def _add_files(self, run: Run, paths: Iterable[tuple[str, FileKind]]) -> None:
        for path, kind in paths:
            self._add(run, resolve_directory(path), kind, None)

    def _add(self, run: Run, path: str, kind: FileKind, cursor: CursorRow | None) -> None:
        assert run.id is not None
        key = (run.id, path)
        if key in self._files:
            return
        self._files[key] = _File(
            run.id, run.job.job_id, path, kind, cursor or CursorRow(run.id, path)
        )
        self._by_path.setdefault(path, set()).add(key)
        self.watcher.add(path)

    def _forget(self, key: tuple[int, str]) -> None:
        self._files.pop(key, None)
        self._failing.pop(key, None)
        self._retry_at.pop(key, None)
        keys = self._by_path.get(key[1], set())
        keys.discard(key)
        if not keys:
            self._by_path.pop(key[1], None)
            self.watcher.remove(key[1])

    def _scan_roots(self, runs: Sequence[Run]) -> None:
        if not runs or not self.roots:
            return
        by_id: dict[str, Run] = {}
        for run in runs:
            by_id[run.job.job_id] = run
            by_id.setdefault(str(run.job.job_id_raw), run)
        for root in self.roots:
            for job_id, path, kind, mtime in files_in_root(root, by_id):
                run = by_id[job_id]
                if written_since(mtime, run):
                    self._add_files(run, [(path, kind)])
        for run, path in root_manifests(self.roots, runs):
            self._add_files(run, [(path, "manifest")])

    def _summarise(self) -> None:
        """Write the GPU summary of ended runs whose sample files were all read; else wait."""
        if self._summaries.runs:
            gpu_files = (self._files.get(key) for key in self._retry)
            self._summaries.write({f.run_id for f in gpu_files if f and f.kind == "gpu"})

    # -- reading ----------------------------------------------------------------------------

    def _read_all(self, keys: Sequence[tuple[int, str]], *, final: bool) -> IngestStats:
        began = time.monotonic()
        stats = IngestStats()
        storage_failures = commits = 0
        for key in keys:
            file = self._files.get(key)
            if file is None:
                self._retry.discard(key)
                continue
            try:
                commits += self._read(file, stats, final=final)
            except Exception as exc:
                storage_failures += isinstance(exc, StorageError)
                stats.failures += 1
                stats.refused += isinstance(exc, RefusedFile)
                reason = failure_reason(exc)
                level = logging.DEBUG if self._failing.get(key) == reason else logging.WARNING
                self._failing[key] = reason
                retry = not (final and gives_up(exc))
                (self._retry.add if retry else self._retry.discard)(key)
                if retry and not isinstance(exc, StorageError):  # storage: the daemon backs off
                    self._back_off(key)
                what = "refused" if isinstance(exc, RefusedFile) else "failed"
                what += ", retrying" if retry else ", given up"
                log.log(level, "job %s: reading %s %s: %s", file.job_id, file.path, what, exc)
                continue
            self._retry.discard(key)
            self._failing.pop(key, None)
            self._retry_at.pop(key, None)
        stats.seconds = time.monotonic() - began
        if storage_failures and not commits:
            raise StorageError(f"database unavailable; {len(self._retry)} log files wait")
        return stats

    def _due(self, key: tuple[int, str], now: datetime) -> bool:
        retry_at = self._retry_at.get(key)
        return retry_at is None or retry_at[0] <= now

    def _back_off(self, key: tuple[int, str]) -> None:
        last = self._retry_at.get(key)
        wait = RETRY_FIRST_SECONDS if last is None else min(2 * last[1], RETRY_MAX_SECONDS)
        self._retry_at[key] = (self.clock() + timedelta(seconds=wait), wait)

    def _read(self, file: _File, stats: IngestStats, *, final: bool) -> int:
        """Read one file to its end, committing points and cursor per chunk; return commits.

        A chunk commits on the writer thread while the next is parsed (ingest_commit.py);
        `file.cursor` is the committed cursor, `row` the cursor after what was parsed.
        """
        run = self._runs[file.run_id]
        policy = file_policy(run, self.roots)
        if file.kind == "manifest":
            file.cursor, written = read_manifest(self.repository, file.cursor, run, policy)
            stats.files += written is not None
            return int(written is not None)
        commits = 0

        def commit(points: list[Row], gpus: list[RunGpu], new: CursorRow, now: datetime) -> None:
            nonlocal commits
            with self.repository.atomic() as connection:
                written = upsert_rows(connection, file.run_id, points)
                upsert_run_gpus(connection, file.run_id, gpus)
                save_cursor(connection, new, now)
            file.cursor = new
            stats.points += written
            commits += 1

        row = file.cursor
        first = True
        try:
            while True:
                chunk = self._parse_chunk(file, row, policy, final=final)
                if chunk is None:
                    return commits
                result, points, gpus, new, now = chunk
                stats.files += first
                first = False
                stats.restarts += result.restarted
                stats.lines += len(result.lines)
                stats.skipped_lines += result.skipped
                if new != row:
                    if result.more:
                        self._committer.submit(functools.partial(commit, points, gpus, new, now))
                    else:
                        self._committer.drain()
                        commit(points, gpus, new, now)
                    row = new
                if not result.more:
                    return commits
        finally:
            self._committer.drain()

    def _parse_chunk(
        self, file: _File, row: CursorRow, policy: FilePolicy, *, final: bool
    ) -> tuple[TailRead, list[Row], list[RunGpu], CursorRow, datetime] | None:
        """Read and parse the chunk after `row`; return it with its rows and the cursor after it."""
        state = _load_state(row.parser_state) if file.kind == "log" else None
        result = read_lines(
            file.path,
            Cursor(row.device, row.inode, row.offset, row.fingerprint, row.skipping),
            max_line_bytes=self.max_line_bytes,
            max_read_bytes=self.max_read_bytes,
            final=final,
            policy=policy,
        )
        if result.missing:
            return None
        counters = {} if result.restarted else dict(row.counters)
        if result.restarted:
            state = StreamState() if file.kind == "log" else None
            log.info(
                "job %s: %s was truncated or replaced; reading it again", file.job_id, file.path
            )
        now = self.clock()
        gpus: list[RunGpu] = []
        if state is None:
            rows = sample_rows(result.lines)
            points, gpus = rows.points, rows.gpus
        else:
            points = self._log_points(
                file, result, state, counters, now, flush=final and not result.more
            )
        new = dataclasses.replace(
            row,
            device=result.cursor.device,
            inode=result.cursor.inode,
            offset=result.cursor.offset,
            fingerprint=result.cursor.fingerprint,
            skipping=result.cursor.skipping,
            skipped_lines=(0 if result.restarted else row.skipped_lines) + result.skipped,
            counters=counters,
            parser_state=None if state is None else _dump_state(state),
        )
        return result, points, gpus, new, now

    def _log_points(
        self,
        file: _File,
        result: TailRead,
        state: StreamState,
        counters: dict[str, int],
        now: datetime,
        *,
        flush: bool,
    ) -> list[Row]:
        """Return the rows of the metric values in these lines (each made as it is parsed)."""
        points: list[Row] = []
        parse = self.parser.parse
        failed: list[tuple[str, Exception]] = []
        for raw in result.lines:
            line = clean(raw)
            if line and not line.isspace():
                try:
                    values = parse(line, state)
                except Exception as exc:  # a parser bug must not block the file forever
                    failed.append((line, exc))
                    continue
                if values:
                    self._rows(values, counters, now, points)
        if failed:
            line, error = failed[0]
            log.warning(
                "job %s: parser failed on %d lines of %s, skipped; first %.120r: %r",
                file.job_id,
                len(failed),
                file.path,
                line,
                error,
            )
        if flush:
            self._rows(self.parser.flush(state), counters, now, points)
        return points

    def _rows(
        self,
        values: Iterable[ParsedValue],
        counters: dict[str, int],
        now: datetime,
        points: list[Row],
    ) -> None:
        """Append the rows of these values: a counted step where the line has none."""
        for value in values:
            name = value.name
            if len(name) > MAX_NAME or not name.isprintable():  # NUL, surrogates
                continue
            step = value.step
            if step is None:
                step = counters.get(name, 0)
                counters[name] = step + 1
            if not 0 <= step <= MAX_STEP:
                continue
            moment = value.timestamp
            points.append((name, step, value.value, now if moment is None else self._utc(moment)))

    def _utc(self, moment: datetime) -> datetime:
        if moment.tzinfo is None:
            if self.local_timezone is not None:
                moment = moment.replace(tzinfo=self.local_timezone)
            else:
                moment = moment.astimezone()
        return moment.astimezone(UTC)


def ended_runs(changed: Iterable[Run], live: Iterable[Run]) -> list[Run]:
    """Return the runs among a cycle's changes that are no longer live (they just became final)."""
    live_ids = {run.id for run in live}
    return [run for run in changed if run.id not in live_ids]


def _load_state(text: str | None) -> StreamState:
    """Return a stored parser state; a fresh one if absent or from an incompatible version."""
    if not text:
        return StreamState()
    try:
        data = json.loads(text)
        known = {item.name for item in dataclasses.fields(StreamState)}
        return StreamState(**{key: value for key, value in data.items() if key in known})
    except (ValueError, TypeError, AttributeError) as exc:
        log.debug("discarding unreadable parser state: %s", exc)
        return StreamState()


def _dump_state(state: StreamState) -> str:
    return json.dumps(dataclasses.asdict(state), separators=(",", ":"), sort_keys=True)
