"""Which daemon writes: one per SQLite file (a file lock), one per cluster on PostgreSQL (an advisory lock).

Two login nodes may run the daemon for one cluster. On PostgreSQL both start; the one that holds
`pg_try_advisory_lock(key(cluster))` on a dedicated connection leads, the other waits on standby and
tries again every poll interval. The lock lives as long as that connection's session, so a leader
that dies (kill -9, host lost) frees it as soon as PostgreSQL notices the closed connection.
On SQLite both daemons would have to share one file on one host: the second one refuses to start.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
from contextlib import suppress
from pathlib import Path
from typing import IO, Protocol

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

from hpcsync.db.repository import create_db_engine, masked_url
from hpcsync.errors import AlreadyRunning, StorageError

log = logging.getLogger(__name__)


class Leadership(Protocol):
    """The right to write for one cluster: acquired, checked before each cycle, released."""

    def acquire(self) -> bool:
        """Return True when this daemon now leads; raises AlreadyRunning or StorageError."""
        ...

    def alive(self) -> bool:
        """Return True while the lock is still held; False means step down."""
        ...

    def release(self) -> None:
        """Give the lock up (idempotent)."""
        ...

    def holder(self) -> str:
        """Return a short description of what is locked, for log lines."""
        ...


def lock_key(cluster: str) -> int:
    """Return the advisory lock key of a cluster: a signed 64-bit int, the same in every process."""
    digest = hashlib.sha256(f"hpcsync:{cluster}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def sqlite_lock_path(url: str, state_dir: str) -> Path:
    """Return the lock file beside an SQLite database file, or in state_dir for an in-memory one."""
    database = make_url(url).database
    if not database or database == ":memory:":
        return Path(state_dir) / "hpcsync.lock"
    return Path(f"{database}.lock")


class FileLock:
    """An exclusive, non-blocking flock on a file; the kernel drops it when the process dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def acquire(self) -> bool:
        """Return True once locked; raises AlreadyRunning when another process holds the lock."""
        if self._file is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.seek(0)
            other = handle.read().strip()
            handle.close()
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise StorageError(f"cannot lock {self.path}: {exc.strerror}") from exc
            pid = f" (pid {other})" if other.isdigit() else ""
            raise AlreadyRunning(
                f"another hpcsync daemon{pid} already uses this database: {self.path} is locked"
            ) from exc
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle
        return True

    def alive(self) -> bool:
        """Return True: a flock held by a live process cannot be taken away."""
        return self._file is not None

    def release(self) -> None:
        """Unlock and close the file (the file stays, so the next daemon locks the same inode)."""
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def holder(self) -> str:
        """Return the lock file's path."""
        return str(self.path)


class AdvisoryLock:
    """`pg_try_advisory_lock(key)` held on a connection of its own, outside the repository's pool."""

    def __init__(self, url: str, cluster: str, connect_timeout: float = 10.0) -> None:
        self.url = url
        self.cluster = cluster
        self.key = lock_key(cluster)
        self.connect_timeout = connect_timeout
        self._engine: Engine | None = None
        self._connection: Connection | None = None

    def acquire(self) -> bool:
        """Return True when this session holds the lock, False when another does; raises StorageError."""
        if self._connection is not None and self.alive():
            return True
        try:
            if self._engine is None:
                # A pool of its own: the lock connection is never handed to a query, nor recycled.
                self._engine = create_db_engine(self.url, self.connect_timeout)
            connection = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            try:
                got = connection.execute(
                    text("SELECT pg_try_advisory_lock(:key)"), {"key": self.key}
                ).scalar_one()
            except BaseException:
                connection.close()
                raise
        except SQLAlchemyError as exc:
            raise StorageError(
                f"cannot take the leader lock on {masked_url(self.url)}: {str(exc).splitlines()[0]}"
            ) from exc
        if not got:
            connection.close()
            return False
        self._connection = connection
        return True

    def alive(self) -> bool:
        """Return True when the lock connection still answers `SELECT 1` (so the lock is held)."""
        if self._connection is None:
            return False
        try:
            self._connection.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            log.warning("leader lock connection lost: %s", str(exc).splitlines()[0])
            self._drop()
            return False
        return True

    def _drop(self) -> None:
        if self._connection is not None:
            try:
                self._connection.invalidate()
                self._connection.close()
            except SQLAlchemyError:
                pass
            self._connection = None

    def release(self) -> None:
        """Unlock, close the connection and its engine."""
        if self._connection is not None:
            # If the session is gone, the lock went with it.
            with suppress(SQLAlchemyError):
                self._connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})
            self._drop()
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def holder(self) -> str:
        """Return the cluster and the lock key."""
        return f"cluster {self.cluster} (advisory lock {self.key})"


def make_leadership(url: str, state_dir: str, cluster: str, connect_timeout: float) -> Leadership:
    """Return the leadership that fits the database: a file lock for SQLite, else an advisory lock."""
    if make_url(url).get_backend_name() == "sqlite":
        return FileLock(sqlite_lock_path(url, state_dir))
    return AdvisoryLock(url, cluster, connect_timeout)
