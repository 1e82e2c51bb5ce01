"""The watcher on real files that grow: inotify events, stat() polling, and the choice between them."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcsync.logs import watcher as watcher_module
from hpcsync.logs.watcher import (
    ObserverKind,
    Watcher,
    expand_hostlist,
    files_in_root,
    filesystem_type,
    is_network_filesystem,
    kind_of,
    parse_mountinfo,
)

MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
40 27 0:50 / /home rw,relatime shared:5 - nfs4 nas:/home rw,vers=4.2
41 27 0:51 / /scratch rw - lustre 10.0.0.1@o2ib:/scratch rw
42 41 0:52 / /scratch/local\\040disk rw - xfs /dev/sdb rw
43 27 0:53 / /gpfs/fs1 rw - gpfs fs1 rw
44 27 0:54 / /mnt/s3 rw - fuse.s3fs s3fs rw
"""


@pytest.fixture
def watchers() -> Iterator[list[Watcher]]:
    made: list[Watcher] = []
    yield made
    for item in made:
        item.close()


def _wait_for(watcher: Watcher, path: str, timeout: float = 5.0) -> set[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = watcher.changed()
        if path in found:
            return found
        time.sleep(0.02)
    return set()


def _grow(path: Path, text: str) -> None:
    with path.open("a") as handle:
        handle.write(text)
        handle.flush()


def test_parse_mountinfo_reads_points_types_and_escapes() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert ("/home", "nfs4") in mounts
    assert ("/scratch/local disk", "xfs") in mounts
    assert filesystem_type("/home/alice/job/slurm-1.out", mounts) == "nfs4"
    assert filesystem_type("/scratch/run/x.out", mounts) == "lustre"
    assert filesystem_type("/scratch/local disk/x.out", mounts) == "xfs"
    assert filesystem_type("/homework/x", mounts) == "ext4"
    assert filesystem_type("/gpfs/fs1/u/x", mounts) == "gpfs"


@pytest.mark.parametrize(
    ("kind", "network"),
    [
        ("nfs", True),
        ("nfs4", True),
        ("lustre", True),
        ("gpfs", True),
        ("cifs", True),
        ("smb3", True),
        ("fuse.sshfs", True),
        (None, True),
        ("ext4", False),
        ("xfs", False),
        ("tmpfs", False),
        ("btrfs", False),
    ],
)
def test_network_filesystems(kind: str | None, network: bool) -> None:
    assert is_network_filesystem(kind) is network


def test_auto_polls_network_filesystems_and_watches_local_ones(
    tmp_path: Path, watchers: list[Watcher]
) -> None:
    local, shared = tmp_path / "local", tmp_path / "shared"
    local.mkdir()
    shared.mkdir()
    table = [("/", "ext4"), (str(shared.resolve()), "nfs4")]
    watcher = Watcher("auto", mounts=lambda: table)
    watchers.append(watcher)
    assert watcher.add(str(local / "a.out")) == "inotify"
    assert watcher.add(str(shared / "b.out")) == "polling"


def test_inotify_sees_a_growing_file(tmp_path: Path, watchers: list[Watcher]) -> None:
    path = tmp_path / "slurm-1.out"
    sibling = tmp_path / "slurm-2.out"
    path.write_text("")
    watcher = Watcher("inotify", rescan_seconds=3600)
    watchers.append(watcher)
    assert watcher.add(str(path)) == "inotify"
    assert watcher.changed() == {str(path)}  # a new registration is read once
    assert watcher.changed() == set()

    _grow(sibling, "loss=1\n")  # not registered: no event for it
    _grow(path, "loss=1\n")
    assert _wait_for(watcher, str(path)) == {str(path)}

    # Event-driven: no stat() of registered files between rescans.
    original = watcher_module._signature
    watcher_module._signature = lambda _path: (_ for _ in ()).throw(AssertionError("stat"))  # type: ignore[assignment]
    try:
        _grow(path, "loss=2\n")
        assert _wait_for(watcher, str(path)) == {str(path)}
    finally:
        watcher_module._signature = original


def test_reading_a_file_is_not_a_change_and_a_write_calls_on_change(
    tmp_path: Path, watchers: list[Watcher]
) -> None:
    path = tmp_path / "slurm-3.out"
    path.write_text("loss=1\n")
    calls: list[float] = []
    watcher = Watcher("inotify", rescan_seconds=3600, on_change=lambda: calls.append(1.0))
    watchers.append(watcher)
    sentinel = tmp_path / "slurm-4.out"
    watcher.add(str(path))
    watcher.add(str(sentinel))
    watcher.changed()
    for _ in range(20):  # hpcsync's own reads: open, read, close without writing
        path.read_text()
    # A write after the reads; once its event is in, the reads' events would be in too.
    _grow(sentinel, "x=1\n")
    found = _wait_for(watcher, str(sentinel))
    time.sleep(0.2)  # the write's close event follows its modify event
    found |= watcher.changed()
    assert found == {str(sentinel)}
    assert len(calls) >= 1
    assert not watcher.pending()

    _grow(path, "loss=2\n")
    assert _wait_for(watcher, str(path)) == {str(path)}
    assert len(calls) >= 2


def test_inotify_sees_a_file_created_after_registration(
    tmp_path: Path, watchers: list[Watcher]
) -> None:
    path = tmp_path / "later.out"
    watcher = Watcher("inotify", rescan_seconds=3600)
    watchers.append(watcher)
    watcher.add(str(path))
    watcher.changed()
    _grow(path, "x=1\n")
    assert str(path) in _wait_for(watcher, str(path))


def test_polling_sees_a_growing_file_by_stat_only(
    tmp_path: Path, watchers: list[Watcher], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "slurm-3.out"
    path.write_text("a=1\n")
    watcher = Watcher("polling")
    watchers.append(watcher)
    assert watcher.add(str(path)) == "polling"
    assert watcher.changed() == {str(path)}
    assert watcher.changed() == set()

    def no_listing(*_args: object) -> None:
        raise AssertionError("the watcher listed a directory")

    monkeypatch.setattr(os, "scandir", no_listing)
    monkeypatch.setattr(os, "listdir", no_listing)
    monkeypatch.setattr(os, "walk", no_listing)
    _grow(path, "a=2\n")
    assert watcher.changed() == {str(path)}
    assert watcher.changed() == set()
    path.unlink()
    assert watcher.changed() == {str(path)}
    path.write_text("new\n")
    assert watcher.changed() == {str(path)}
    assert watcher._inotify is None  # no thread for polling


def test_inotify_falls_back_to_polling_for_a_missing_directory(
    tmp_path: Path, watchers: list[Watcher]
) -> None:
    watcher = Watcher("inotify")
    watchers.append(watcher)
    path = tmp_path / "absent" / "x.out"
    assert watcher.add(str(path)) == "polling"


def test_rescan_catches_a_missed_inotify_event(tmp_path: Path, watchers: list[Watcher]) -> None:
    now = [0.0]
    path = tmp_path / "job.out"
    path.write_text("")
    watcher = Watcher("inotify", rescan_seconds=60, monotonic=lambda: now[0])
    watchers.append(watcher)
    watcher.add(str(path))
    watcher.changed()
    now[0] = 61.0
    watcher.changed()  # the first rescan records each file's size and time
    _grow(path, "z=1\n")
    time.sleep(0.2)
    with watcher._lock:
        watcher._dirty.clear()  # as if the kernel's event queue had overflowed
    assert watcher.changed() == set()
    now[0] = 122.0
    assert watcher.changed() == {str(path)}


def test_removed_file_is_no_longer_reported(tmp_path: Path, watchers: list[Watcher]) -> None:
    path = tmp_path / "job.out"
    modes: list[ObserverKind] = ["inotify", "polling"]
    for mode in modes:
        watcher = Watcher(mode)
        watchers.append(watcher)
        watcher.add(str(path))
        watcher.remove(str(path))
        _grow(path, "x\n")
        time.sleep(0.1)
        assert watcher.changed() == set()
        assert watcher.paths == set()


def test_files_in_root_matches_whole_job_ids_only(tmp_path: Path) -> None:
    names = [
        "slurm-1234.out",
        "train.1234.log",
        "slurm-12345.out",
        "slurm-11234.out",
        "slurm-1234_7.out",
        "slurm-77_3.out",
        "model-1234.pt",
        "slurm-1234.out.gz",
        "hpcsync-1234-node01.gpu.jsonl",
        "hpcsync-77_3-n2.gpu.jsonl",
        "hpcsync-12345-node01.gpu.jsonl",
    ]
    for name in names:
        (tmp_path / name).write_text("")
    (tmp_path / "1234.out").mkdir()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "slurm-1234.out").write_text("")
    found = {
        (job_id, os.path.basename(path), kind)
        for job_id, path, kind, _ in files_in_root(str(tmp_path), {"1234", "77_3"})
    }
    assert found == {
        ("1234", "slurm-1234.out", "log"),
        ("1234", "train.1234.log", "log"),
        ("77_3", "slurm-77_3.out", "log"),
        ("1234", "hpcsync-1234-node01.gpu.jsonl", "gpu"),
        ("77_3", "hpcsync-77_3-n2.gpu.jsonl", "gpu"),
    }
    assert list(files_in_root(str(tmp_path / "missing"), {"1234"})) == []


def test_kind_of() -> None:
    assert kind_of("/x/hpcsync-12_3-gpu01.gpu.jsonl") == "gpu"
    assert kind_of("/x/metrics-12.jsonl") == "log"


@pytest.mark.parametrize(
    ("text", "hosts"),
    [
        ("localhost", ["localhost"]),
        ("gpu[01-03],cpu1", ["gpu01", "gpu02", "gpu03", "cpu1"]),
        ("n[1,3-4]", ["n1", "n3", "n4"]),
        ("r[1-2]-n[0-1]", ["r1-n0", "r1-n1", "r2-n0", "r2-n1"]),
    ],
)
def test_expand_hostlist(text: str, hosts: list[str]) -> None:
    assert expand_hostlist(text) == hosts


def test_expand_hostlist_is_bounded() -> None:
    assert len(expand_hostlist("n[0-999999]", limit=50)) == 50
