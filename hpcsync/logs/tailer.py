"""Byte-offset tailing of one file: complete lines from a cursor on, truncation and replacement seen.

A cursor is where reading stopped: the file's identity (device, inode), the byte offset just
after the last complete line read, and a fingerprint of the bytes before that offset. A read
goes from the offset to the last line break; a partial last line is held back until its break
arrives (or until the final read of a finished job). Both `\\n` and `\\r` end a line, so each
progress-bar redraw is its own line and empty lines are dropped.

The file starts again at byte 0, with a fresh cursor, when it is a different file (new inode or
device), when it is shorter than the offset (truncated, e.g. by a requeued job), or when the
bytes before the offset no longer match the fingerprint (truncated and rewritten past the old
offset between two reads).

A line longer than `max_line_bytes` is skipped and counted without being held in memory: the
file is read in bounded chunks, and a cursor inside such a line carries `skipping`, so even a
line still being written is never read twice. Invalid UTF-8 becomes U+FFFD.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field

from hpcsync.logs.safe_open import FilePolicy, open_log

CHUNK_BYTES = 1 << 20
FINGERPRINT_BYTES = 1024
DEFAULT_MAX_LINE_BYTES = 65536
DEFAULT_MAX_READ_BYTES = 4 << 20

_BREAK = re.compile(rb"[\r\n]")


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where reading of one file stopped; the zero cursor means "from the start"."""

    device: int | None = None
    inode: int | None = None
    offset: int = 0
    fingerprint: str | None = None
    skipping: bool = False
    """The offset is inside an over-long line: discard up to the next line break."""


@dataclass(frozen=True, slots=True)
class TailRead:
    """What one read returned: complete lines, the cursor after them, and what was odd."""

    lines: list[str] = field(default_factory=list)
    cursor: Cursor = field(default_factory=Cursor)
    restarted: bool = False
    """The file was truncated, rewritten or replaced; lines start again at byte 0."""
    skipped: int = 0
    """Over-long lines skipped."""
    more: bool = False
    """The read stopped at its byte budget; read again for the rest."""
    missing: bool = False
    """The file does not exist (yet)."""


def read_lines(
    path: str,
    cursor: Cursor,
    *,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    max_read_bytes: int = DEFAULT_MAX_READ_BYTES,
    final: bool = False,
    policy: FilePolicy | None = None,
) -> TailRead:
    """Return the complete lines after `cursor` and the cursor after them; raises OSError.

    `final` also returns a partial last line (the job has ended and will write no more).
    The file is opened by `open_log` under `policy` (RefusedFile, an OSError, when refused).
    """
    try:
        fd = open_log(path, policy)
    except FileNotFoundError:
        return TailRead(cursor=cursor, missing=True)
    try:
        stat = os.fstat(fd)
        restarted = not _same_file(fd, stat, cursor)
        start = Cursor() if restarted else cursor
        if stat.st_size <= start.offset and not (final and start.skipping):
            unchanged = Cursor(
                stat.st_dev, stat.st_ino, start.offset, start.fingerprint, start.skipping
            )
            return TailRead(cursor=unchanged, restarted=restarted)
        scan = _Scan(max_line_bytes, start.offset, skipping=start.skipping)
        budget = max(max_read_bytes, max_line_bytes + 2)
        position, end = start.offset, stat.st_size
        while position < end and position - start.offset < budget:
            size = min(CHUNK_BYTES, end - position, start.offset + budget - position)
            data = os.pread(fd, size, position)
            if not data:
                break
            scan.feed(data, position)
            position += len(data)
        more = position < end
        if final and not more:
            scan.flush(position)
        offset = position if scan.skipping else scan.consumed
        fingerprint = start.fingerprint if offset == start.offset else _fingerprint(fd, offset)
        new = Cursor(stat.st_dev, stat.st_ino, offset, fingerprint, scan.skipping)
        return TailRead(scan.lines, new, restarted, scan.skipped, more)
    finally:
        os.close(fd)


def _same_file(fd: int, stat: os.stat_result, cursor: Cursor) -> bool:
    """True when the cursor's offset still points into the bytes it was read from."""
    if cursor.inode is None or cursor.offset == 0:
        return cursor.inode is None or (stat.st_ino, stat.st_dev) == (cursor.inode, cursor.device)
    if (stat.st_ino, stat.st_dev) != (cursor.inode, cursor.device):
        return False
    if stat.st_size < cursor.offset:
        return False
    return cursor.fingerprint is None or _fingerprint(fd, cursor.offset) == cursor.fingerprint


def _fingerprint(fd: int, offset: int) -> str | None:
    """Return a hash of the first and last few bytes before `offset`, or None at 0."""
    if offset <= 0:
        return None
    head = os.pread(fd, min(offset, FINGERPRINT_BYTES), 0)
    start = max(0, offset - FINGERPRINT_BYTES)
    tail = os.pread(fd, offset - start, start)
    return hashlib.blake2b(head + b"\0" + tail, digest_size=16).hexdigest()


class _Scan:
    """Splits chunks into lines with a bounded pending buffer."""

    def __init__(self, max_line_bytes: int, consumed: int, *, skipping: bool) -> None:
        self.max_line_bytes = max_line_bytes
        self.consumed = consumed
        self.skipping = skipping
        self.pending = b""
        self.lines: list[str] = []
        self.skipped = 0

    def feed(self, data: bytes, position: int) -> None:
        """Take the chunk that starts at file offset `position`."""
        parts = _BREAK.split(data)
        tail = parts.pop()
        if parts:
            first = parts[0]
            if self.skipping:
                self.skipped += 1
                self.skipping = False
                parts[0] = b""
            elif self.pending:
                parts[0] = self.pending + first
            self.pending = b""
            limit = self.max_line_bytes
            append = self.lines.append
            for part in parts:
                if not part:
                    continue
                if len(part) > limit:
                    self.skipped += 1
                else:
                    append(part.decode("utf-8", "replace"))
            self.consumed = position + len(data) - len(tail)
        if self.skipping:
            return
        if len(self.pending) + len(tail) > self.max_line_bytes:
            self.pending = b""
            self.skipping = True
        else:
            self.pending += tail

    def flush(self, position: int) -> None:
        """End the last line at end of file (the writer is gone)."""
        if self.skipping:
            self.skipped += 1
            self.skipping = False
        elif self.pending:
            self.lines.append(self.pending.decode("utf-8", "replace"))
        self.pending = b""
        self.consumed = position
