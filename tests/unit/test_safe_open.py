"""open_log on its own: what it opens, what it refuses and why, and that it never blocks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hpcsync.logs.safe_open import FilePolicy, RefusedFile, open_log, user_uid
from hpcsync.logs.tailer import Cursor, read_lines

ME = str(os.geteuid())


def _read(path: Path, policy: FilePolicy | None = None) -> bytes:
    fd = open_log(str(path), policy)
    try:
        return os.read(fd, 100)
    finally:
        os.close(fd)


def test_a_regular_file_of_the_user_in_the_root_opens(tmp_path: Path) -> None:
    (tmp_path / "a.out").write_text("x=1\n")
    policy = FilePolicy.for_job([str(tmp_path)], [], ME)
    assert _read(tmp_path / "a.out", policy) == b"x=1\n"
    fd = open_log(str(tmp_path / "a.out"))
    try:
        flags = os.get_blocking(fd), os.get_inheritable(fd)
    finally:
        os.close(fd)
    assert flags == (False, False)  # O_NONBLOCK and O_CLOEXEC


def test_refusals_name_their_reason(tmp_path: Path) -> None:
    (tmp_path / "real.out").write_text("x=1\n")
    (tmp_path / "link.out").symlink_to(tmp_path / "real.out")
    os.mkfifo(tmp_path / "fifo.out")
    (tmp_path / "dir.out").mkdir()
    for name, reason in [("link.out", "symbolic link"), ("fifo.out", "FIFO"), ("dir.out", "dir")]:
        with pytest.raises(RefusedFile, match=reason):
            open_log(str(tmp_path / name))
    with pytest.raises(FileNotFoundError):
        open_log(str(tmp_path / "missing.out"))


def test_outside_the_roots_and_output_directories(tmp_path: Path) -> None:
    root, job, other = tmp_path / "root", tmp_path / "job", tmp_path / "other"
    for directory in (root, root / "sub", job, job / "sub", other):
        directory.mkdir()
        (directory / "f.out").write_text("x=1\n")
    (root / "escape").symlink_to(other)
    policy = FilePolicy.for_job([str(root)], [str(job / "slurm-1.out")], None)
    assert _read(root / "f.out", policy) and _read(root / "sub" / "f.out", policy)
    assert _read(job / "f.out", policy)
    for path in (other / "f.out", job / "sub" / "f.out", root / "escape" / "f.out"):
        with pytest.raises(RefusedFile, match="outside"):
            open_log(str(path), policy)


def test_owner_rules(tmp_path: Path) -> None:
    path = tmp_path / "f.out"
    path.write_text("x=1\n")
    assert _read(path, FilePolicy(user=ME))
    with pytest.raises(RefusedFile, match="unknown"):
        open_log(str(path), FilePolicy(user="no-such-user-hpcsync"))
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    os.chown(path, 4242, 4242)
    with pytest.raises(RefusedFile, match="owned by uid 4242"):
        open_log(str(path), FilePolicy(user="0"))
    os.chown(path, 0, 0)
    with pytest.raises(RefusedFile, match="owned by root"):
        open_log(str(path), FilePolicy(user="4242"))
    assert _read(path, FilePolicy(user="root"))  # root's own job


def test_user_uid() -> None:
    assert user_uid("root") == 0 and user_uid("4242") == 4242
    with pytest.raises(KeyError):
        user_uid("no-such-user-hpcsync")


def test_the_tailer_refuses_through_open_log(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.out")  # a blocking open would hang here
    with pytest.raises(RefusedFile):
        read_lines(str(tmp_path / "fifo.out"), Cursor())
