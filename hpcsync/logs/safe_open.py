"""Opening a job's log file safely, for a daemon that may hold more privilege than the job's user.

The rules (`open_log`):
- The directory part is resolved (`realpath`, symlinked directories too) and opened; the kernel's
  name for the opened directory (`/proc/self/fd`) must lie in an allowed directory: a log root or
  below it, or exactly one of the job's own StdOut/StdErr directories.
- The last component is never followed: a symbolic link there is refused, whatever it points to.
- The file is first opened with `O_PATH` (no open side effects, no blocking) and `fstat`ed; only a
  regular file is reopened for reading (`O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC`, through
  `/proc/self/fd`, so the very inode checked). FIFOs, sockets, devices and directories are
  refused without ever being opened for reading.
- The file must be owned by the job's user. A file owned by root in a user's job is refused too
  (root writes nothing into a user's log directory; a link to one is the attack). A user that does
  not resolve (`pwd.getpwnam`) refuses every file of the job until it does (lookups are cached
  only when they succeed, so a directory service that is briefly down delays, never leaks). A
  job with no user name (a fake scheduler, an old record) gets no owner check; a numeric name
  is taken as the uid.

Every refusal raises `RefusedFile` with a short reason; a missing file raises FileNotFoundError.
"""

from __future__ import annotations

import errno
import functools
import os
import pwd
import stat
from collections.abc import Iterable
from dataclasses import dataclass

_PROC_FD = "/proc/self/fd"
_O_PATH: int = getattr(os, "O_PATH", 0)
_CLOEXEC: int = getattr(os, "O_CLOEXEC", 0)
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | _CLOEXEC
_DIRECTORY_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _CLOEXEC
_NOFOLLOW: int = getattr(os, "O_NOFOLLOW", 0)
_KINDS = (
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


class RefusedFile(OSError):
    """A file the daemon will not read; `reason` says why in a few words."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(errno.EPERM, f"refused: {reason}", path)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True, slots=True)
class FilePolicy:
    """Where a job's files may lie and whose they must be."""

    roots: tuple[str, ...] = ()
    """Real paths of the log roots: a file may lie in one or anywhere below it."""
    directories: tuple[str, ...] = ()
    """Real paths of the job's own output directories: a file may lie directly in one."""
    user: str | None = None
    """The job's user; None means no owner check."""

    @classmethod
    def for_job(cls, roots: Iterable[str], outputs: Iterable[str], user: str | None) -> FilePolicy:
        """Return the policy for a job with these log roots, output files and user."""
        return cls(
            roots=tuple(sorted({os.path.realpath(root) for root in roots})),
            directories=tuple(
                sorted({os.path.realpath(os.path.dirname(path) or ".") for path in outputs})
            ),
            user=user or None,
        )

    def allows_directory(self, directory: str) -> bool:
        """True when files directly in this real directory may be read (always, if none named)."""
        if directory in self.directories or not (self.roots or self.directories):
            return True
        return any(
            directory == root or directory.startswith(root.rstrip("/") + "/") for root in self.roots
        )


def user_uid(user: str) -> int:
    """Return the uid of a user name (a numeric name is a uid); raises KeyError if unknown."""
    if user.isdigit():
        return int(user)
    return _lookup_uid(user)


@functools.lru_cache(maxsize=4096)
def _lookup_uid(user: str) -> int:
    # lru_cache keeps no exception: an unknown user is looked up again next time.
    return pwd.getpwnam(user).pw_uid


def open_log(path: str, policy: FilePolicy | None = None) -> int:
    """Return a read-only descriptor of a regular log file; raises RefusedFile or OSError.

    Without a policy, only the symlink and file-type rules apply.
    """
    directory, name = os.path.split(path)
    if not name or name in (".", ".."):
        raise RefusedFile(path, "not a file name")
    real_directory = os.path.realpath(directory or ".")
    dir_fd = os.open(real_directory, _DIRECTORY_FLAGS)
    try:
        if policy is not None and not policy.allows_directory(_fd_path(dir_fd, real_directory)):
            raise RefusedFile(path, "outside the log roots and the job's output directory")
        probe = _O_PATH or _READ_FLAGS
        try:
            fd = os.open(name, probe | _NOFOLLOW | _CLOEXEC, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise RefusedFile(path, "a symbolic link") from None
            raise
    finally:
        os.close(dir_fd)
    try:
        _check(path, os.fstat(fd), policy)
        if not _O_PATH:
            return fd
        readable = os.open(f"{_PROC_FD}/{fd}", _READ_FLAGS)
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return readable


def _check(path: str, status: os.stat_result, policy: FilePolicy | None) -> None:
    mode = status.st_mode
    if not stat.S_ISREG(mode):
        kind = next((text for test, text in _KINDS if test(mode)), "not a regular file")
        raise RefusedFile(path, kind)
    if policy is None or policy.user is None:
        return
    try:
        expected = user_uid(policy.user)
    except KeyError:
        raise RefusedFile(path, f"user {policy.user!r} unknown") from None
    if status.st_uid == expected:
        return
    if status.st_uid == 0:
        raise RefusedFile(path, f"owned by root, not by the job's user {policy.user}")
    raise RefusedFile(path, f"owned by uid {status.st_uid}, not by the job's user {policy.user}")


def _fd_path(fd: int, fallback: str) -> str:
    """Return the kernel's path of an open directory (immune to a swapped symlink), else fallback."""
    try:
        return os.readlink(f"{_PROC_FD}/{fd}")
    except OSError:
        return fallback
