"""Noticing that registered log files grew: inotify on local disks, stat() polling on shared storage.

Only registered files are ever looked at. With inotify, the watch is on each file's directory
(not recursive), and events for other names in it are dropped. A write from another machine to
NFS, Lustre or GPFS raises no inotify event on this one, so files there are polled: one `stat()`
per registered file per `changed()` call, and never a directory listing or a tree walk.

`observer="auto"` picks per directory by filesystem type (from /proc/self/mountinfo); a
directory whose watch cannot be set up (missing, or out of inotify watches) is polled instead.
Files under inotify are also stat()-checked every `rescan_seconds`, so a dropped event (queue
overflow) delays a read but never loses it.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any, Literal

log = logging.getLogger(__name__)

ObserverKind = Literal["auto", "inotify", "polling"]
Mode = Literal["inotify", "polling"]
Kind = Literal["log", "gpu"]
LOG_SUFFIXES = (".out", ".err", ".log", ".txt", ".jsonl")
MAX_HOSTS = 1024
MOUNTINFO = "/proc/self/mountinfo"
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "lustre",
        "gpfs",
        "cifs",
        "smb3",
        "smbfs",
        "ceph",
        "glusterfs",
        "beegfs",
        "fhgfs",
        "panfs",
        "wekafs",
        "pvfs2",
        "orangefs",
        "ocfs2",
        "gfs2",
        "afs",
        "9p",
        "virtiofs",
        "vboxsf",
        "davfs",
    }
)
"""Filesystems whose remote writes raise no local inotify event (plus every `fuse.*`)."""

_Signature = tuple[int, int, int, int] | None
_SAMPLE_NAME = re.compile(r"hpcsync-(\d+(?:_\d+)?)-.+\.gpu\.jsonl")
_ID_TOKEN = re.compile(r"(?<!\d)(\d+(?:_\d+)?)(?!\d)")


def files_in_root(root: str, job_ids: Collection[str]) -> Iterator[tuple[str, str, Kind, float]]:
    """Yield (job id, path, kind, mtime) for top-level files of root whose names carry a job id.

    One `scandir` of root, never of its subdirectories. A log file ends in one of LOG_SUFFIXES
    and carries the id as a whole number (`slurm-1234.out`, `x.1234_7.log`; not
    `slurm-12345.out`, nor `slurm-1234_7.out` for job 1234); a sample file is named
    `hpcsync-<job id>-<node>.gpu.jsonl`.
    """
    try:
        entries = list(os.scandir(root))
    except OSError as exc:
        log.warning("cannot list log root %s: %s", root, exc)
        return
    for entry in entries:
        name = entry.name
        sample = _SAMPLE_NAME.fullmatch(name)
        if sample is not None:
            candidates = [sample.group(1)]
            kind: Kind = "gpu"
        elif name.endswith(LOG_SUFFIXES):
            candidates = _ID_TOKEN.findall(name)
            kind = "log"
        else:
            continue
        for job_id in candidates:
            if job_id in job_ids:
                mtime = _file_mtime(entry)
                if mtime is not None:
                    yield job_id, entry.path, kind, mtime
                break


def kind_of(path: str) -> Kind:
    """Return "gpu" for a sample file's name, else "log"."""
    return "gpu" if _SAMPLE_NAME.fullmatch(os.path.basename(path)) else "log"


def expand_hostlist(text: str, limit: int = MAX_HOSTS) -> list[str]:
    """Return the hosts of a Slurm hostlist (`gpu[01-03],cpu1`), at most `limit` of them."""
    hosts: list[str] = []
    depth, start = 0, 0
    for index, char in enumerate(text + ","):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == "," and depth == 0:
            hosts.extend(_expand_host(text[start:index], limit - len(hosts)))
            start = index + 1
    return [host for host in hosts if host][:limit]


def _expand_host(host: str, limit: int) -> list[str]:
    if "[" not in host or "]" not in host or limit <= 0:
        return [host]
    prefix, rest = host.split("[", 1)
    ranges, suffix = rest.split("]", 1)
    out: list[str] = []
    for part in ranges.split(","):
        low, _, high = part.partition("-")
        if not high:
            out.extend(f"{prefix}{low}{tail}" for tail in _expand_host(suffix, limit - len(out)))
        elif low.isdigit() and high.isdigit():
            for number in range(int(low), min(int(high), int(low) + limit) + 1):
                tails = _expand_host(suffix, limit - len(out))
                out.extend(f"{prefix}{number:0{len(low)}d}{tail}" for tail in tails)
                if len(out) >= limit:
                    break
        if len(out) >= limit:
            break
    return out[:limit]


def _file_mtime(entry: os.DirEntry[str]) -> float | None:
    try:
        return entry.stat().st_mtime if entry.is_file() else None
    except OSError:
        return None


def read_mounts(mountinfo: str = MOUNTINFO) -> list[tuple[str, str]]:
    """Return (mount point, filesystem type) pairs in mount order; empty if unreadable."""
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return []
    return parse_mountinfo(text)


def parse_mountinfo(text: str) -> list[tuple[str, str]]:
    """Return (mount point, filesystem type) pairs from /proc/self/mountinfo text."""
    mounts: list[tuple[str, str]] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 10 or "-" not in fields[6:]:
            continue
        separator = fields.index("-", 6)
        if separator + 1 >= len(fields):
            continue
        mounts.append((_unescape(fields[4]), fields[separator + 1]))
    return mounts


def filesystem_type(path: str, mounts: Iterable[tuple[str, str]]) -> str | None:
    """Return the type of the filesystem `path` lies on (the longest, latest mount), or None."""
    real = os.path.realpath(path)
    best: tuple[int, str] | None = None
    for point, kind in mounts:
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= best[0]):
            best = (len(point), kind)
    return best[1] if best else None


def is_network_filesystem(kind: str | None) -> bool:
    """True for filesystems where inotify misses other machines' writes (unknown counts too)."""
    if kind is None:
        return True
    return kind in NETWORK_FILESYSTEMS or kind.startswith("fuse.") or kind == "fuse"


class Watcher:
    """Tells which registered files may have grown since the last `changed()`."""

    def __init__(
        self,
        observer: ObserverKind = "auto",
        *,
        rescan_seconds: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
        mounts: Callable[[], list[tuple[str, str]]] = read_mounts,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.observer = observer
        self.rescan_seconds = rescan_seconds
        self.monotonic = monotonic
        self.on_change = on_change
        self._mounts = mounts
        self._mount_table: list[tuple[str, str]] | None = None
        self._lock = threading.Lock()
        self._modes: dict[str, Mode] = {}
        self._by_directory: dict[str, set[str]] = {}
        self._directory_modes: dict[str, Mode] = {}
        self._watches: dict[str, Any] = {}
        self._signatures: dict[str, _Signature] = {}
        self._dirty: set[str] = set()
        self._inotify: Any = None
        self._last_rescan = monotonic()

    @property
    def paths(self) -> set[str]:
        """Return the registered paths."""
        with self._lock:
            return set(self._modes)

    def mode(self, path: str) -> Mode | None:
        """Return how a registered path is watched, or None if it is not registered."""
        with self._lock:
            return self._modes.get(os.path.abspath(path))

    def add(self, path: str) -> Mode:
        """Register a file (idempotent); it counts as changed until the next `changed()`."""
        path = os.path.abspath(path)
        with self._lock:
            if path in self._modes:
                return self._modes[path]
        directory = os.path.dirname(path)
        mode = self._directory_mode(directory)
        with self._lock:
            self._modes[path] = mode
            self._by_directory.setdefault(directory, set()).add(path)
            self._dirty.add(path)
        return mode

    def remove(self, path: str) -> None:
        """Unregister a file; its directory's watch ends with its last file."""
        path = os.path.abspath(path)
        directory = os.path.dirname(path)
        with self._lock:
            if self._modes.pop(path, None) is None:
                return
            self._dirty.discard(path)
            self._signatures.pop(path, None)
            siblings = self._by_directory.get(directory, set())
            siblings.discard(path)
            if siblings:
                return
            self._by_directory.pop(directory, None)
            self._directory_modes.pop(directory, None)
            watch = self._watches.pop(directory, None)
        if watch is not None and self._inotify is not None:
            try:
                self._inotify.unschedule(watch)
            except (KeyError, OSError) as exc:
                log.debug("unwatching %s: %s", directory, exc)

    def changed(self) -> set[str]:
        """Return the registered files that may have changed (polled ones are stat()ed now)."""
        now = self.monotonic()
        rescan = now - self._last_rescan >= self.rescan_seconds
        if rescan:
            self._last_rescan = now
        with self._lock:
            found = self._dirty
            self._dirty = set()
            to_stat = [p for p, m in self._modes.items() if rescan or m == "polling"]
        for path in to_stat:
            signature = _signature(path)
            with self._lock:
                if path not in self._modes:
                    continue
                if self._signatures.get(path, 0) != signature:
                    found.add(path)
                self._signatures[path] = signature
        return found

    def pending(self) -> bool:
        """True when an inotify event marked a file since the last `changed()`."""
        with self._lock:
            return bool(self._dirty)

    def mark(self, path: str) -> None:
        """Record a change of a registered file (called from the inotify thread)."""
        with self._lock:
            if path not in self._modes:
                return
            self._dirty.add(path)
        if self.on_change is not None:
            self.on_change()

    def close(self) -> None:
        """Stop the inotify thread, if one was started."""
        observer, self._inotify = self._inotify, None
        with self._lock:
            self._watches.clear()
            self._directory_modes.clear()
        if observer is not None:
            observer.stop()
            observer.join(timeout=5)

    def _directory_mode(self, directory: str) -> Mode:
        with self._lock:
            known = self._directory_modes.get(directory)
        if known is not None:
            return known
        mode: Mode = "polling"
        if self.observer == "inotify" or (
            self.observer == "auto" and not is_network_filesystem(self._filesystem(directory))
        ):
            mode = "inotify" if self._watch(directory) else "polling"
        with self._lock:
            self._directory_modes[directory] = mode
        return mode

    def _filesystem(self, directory: str) -> str | None:
        if self._mount_table is None:
            self._mount_table = self._mounts()
        return filesystem_type(directory, self._mount_table)

    def _watch(self, directory: str) -> bool:
        """Start an inotify watch on a directory; False (with one log line) if it cannot."""
        try:
            from watchdog.events import (
                FileClosedEvent,
                FileCreatedEvent,
                FileDeletedEvent,
                FileModifiedEvent,
                FileMovedEvent,
            )

            if self._inotify is None:
                from watchdog.observers.inotify import InotifyObserver

                observer = InotifyObserver()
                observer.daemon = True
                observer.start()
                self._inotify = observer
            # Writes, creations, renames and deletions only: the kernel then never reports the
            # opens and closes of hpcsync's own reads, which would wake it to read again.
            events = [
                FileModifiedEvent,
                FileCreatedEvent,
                FileMovedEvent,
                FileDeletedEvent,
                FileClosedEvent,
            ]
            watch = self._inotify.schedule(
                _Handler(self, directory), directory, recursive=False, event_filter=events
            )
        except (OSError, ImportError) as exc:
            log.warning("cannot watch %s with inotify (%s); polling it instead", directory, exc)
            return False
        with self._lock:
            self._watches[directory] = watch
        return True


class _Handler:
    """Receives watchdog events for one directory and marks registered files."""

    def __init__(self, watcher: Watcher, directory: str) -> None:
        self.watcher = watcher
        self.directory = directory

    def dispatch(self, event: Any) -> None:
        """Mark the event's source and destination paths."""
        for attribute in ("src_path", "dest_path"):
            raw = getattr(event, attribute, "")
            if raw:
                self.watcher.mark(os.fsdecode(raw))


def _signature(path: str) -> _Signature:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _unescape(field: str) -> str:
    """Return a mountinfo path with its octal escapes (`\\040` for a space) decoded."""
    if "\\" not in field:
        return field
    out: list[str] = []
    index = 0
    while index < len(field):
        if field[index] == "\\" and field[index + 1 : index + 4].isdigit():
            out.append(chr(int(field[index + 1 : index + 4], 8)))
            index += 4
        else:
            out.append(field[index])
            index += 1
    return "".join(out)
