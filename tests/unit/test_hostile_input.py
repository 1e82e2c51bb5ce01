"""Hostile and malformed files in log roots, read by the real LogIngester on SQLite and PostgreSQL.

Each case names its bad input and its expected outcome. Beside every bad job runs a normal
job, whose metrics must come out exact: one bad file never disturbs the others.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import socket
import stat
import tempfile
import traceback
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from hpcsync.db.metric_store import load_metrics
from hpcsync.db.repository import Repository
from hpcsync.ingest import RETRY_FIRST_SECONDS, IngestStats, LogIngester
from hpcsync.models import Job, JobState, Run, RunStatus

SUBMITTED = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
READ_AT = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
ROOT = os.geteuid() == 0
JOB_UID = 4242 if ROOT else os.geteuid()
"""The job's user: a numeric user name is taken as the uid, so no account is needed."""
OTHER_UID = 4343
GOOD = "step=1 loss=1.5\nstep=2 loss=0.25\n"

needs_root = pytest.mark.skipif(not ROOT, reason="needs root to chown, mknod and drop privileges")


def _own(path: Path, uid: int = JOB_UID) -> Path:
    if ROOT:
        os.chown(path, uid, uid, follow_symlinks=False)
    return path


def _write(path: Path, data: bytes | str, uid: int = JOB_UID) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return _own(path, uid)


def _save(repository: Repository, job_id: str, stdout: Path, user: str | None = None) -> Run:
    job = Job(
        job_id=job_id,
        job_id_raw=int(job_id),
        state=JobState.RUNNING,
        stdout_path=str(stdout),
        stderr_path=str(stdout),
        work_dir=str(stdout.parent),
        node_list="node01",
        submitted_at=SUBMITTED,
        user_name=str(JOB_UID) if user is None else user,
    )
    run = Run(cluster="test", experiment="hostile", job=job, status=RunStatus.RUNNING)
    return repository.save_runs([(run, False, [])], SUBMITTED)[0]


def _values(repository: Repository, run: Run, name: str | None = None) -> dict[str, float]:
    assert run.id is not None
    with repository.atomic() as connection:
        return {f"{p.name}@{p.step}": p.value for p in load_metrics(connection, run.id, name)}


class Setup:
    """A log root with one normal job in it, and an ingester over the root."""

    def __init__(self, repository: Repository, tmp_path: Path) -> None:
        self.repository = repository
        self.tmp = tmp_path
        self.root = tmp_path / "logs"
        self.root.mkdir()
        os.chmod(tmp_path, 0o755)
        os.chmod(self.root, 0o777)
        self.good = _save(repository, "900", _write(self.root / "slurm-900.out", GOOD))
        self.now = READ_AT
        self.ingester = LogIngester(
            repository,
            roots=[str(self.root)],
            observer="polling",
            clock=lambda: self.now,
            local_timezone=UTC,
        )

    def run(self, job_id: str, user: str | None = None) -> Run:
        """Return a saved run whose StdOut is slurm-<job_id>.out in the root."""
        return _save(self.repository, job_id, self.root / f"slurm-{job_id}.out", user)

    def ingest(self, *runs: Run) -> IngestStats:
        """Track the normal job and these, and read them once."""
        self.ingester.track([self.good, *runs])
        return self.ingester.ingest()

    def good_is_exact(self) -> None:
        """The normal job's metrics are exactly its two lines."""
        assert _values(self.repository, self.good) == {"loss@1": 1.5, "loss@2": 0.25}


@pytest.fixture
def setup(repository: Repository, tmp_path: Path) -> Iterator[Setup]:
    made = Setup(repository, tmp_path)
    yield made
    made.ingester.close()


def _secret_outside(tmp_path: Path) -> Path:
    """A root-only directory holding a root-owned file with a secret."""
    vault = tmp_path / "vault"
    vault.mkdir(mode=0o700)
    secret = vault / "secret.out"
    secret.write_text("step=1 secret=42\n")
    secret.chmod(0o600)
    return secret


def _symlink_out_of_root(s: Setup) -> None:
    outside = s.tmp / "elsewhere"
    outside.mkdir()
    target = _write(outside / "data.out", "step=1 secret=42\n")
    (s.root / "slurm-201.out").symlink_to(target)


def _symlink_to_root_only(s: Setup) -> None:
    (s.root / "slurm-201.out").symlink_to(_secret_outside(s.tmp))


def _symlink_in_root(s: Setup) -> None:
    target = _write(s.root / "real-data.txt", "step=1 secret=42\n")
    (s.root / "slurm-201.out").symlink_to(target)


def _fifo(s: Setup) -> None:
    os.mkfifo(s.root / "slurm-201.out")
    _own(s.root / "slurm-201.out")


def _socket(s: Setup) -> None:
    # AF_UNIX paths are limited to ~108 bytes: bind from inside the directory.
    here = os.getcwd()
    os.chdir(s.root)
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind("slurm-201.out")
    finally:
        os.chdir(here)
    _own(s.root / "slurm-201.out")


def _device(s: Setup) -> None:
    # The device numbers of /dev/zero: reading it would never end.
    os.mknod(s.root / "slurm-201.out", 0o666 | stat.S_IFCHR, os.makedev(1, 5))
    _own(s.root / "slurm-201.out")


def _directory(s: Setup) -> None:
    (s.root / "slurm-201.out").mkdir()
    _own(s.root / "slurm-201.out")


def _other_owner(s: Setup) -> None:
    _write(s.root / "slurm-201.out", "step=1 secret=42\n", uid=OTHER_UID)


def _root_owned(s: Setup) -> None:
    _write(s.root / "slurm-201.out", "step=1 secret=42\n", uid=0)


def _hard_link_to_root_only(s: Setup) -> None:
    os.link(_secret_outside(s.tmp), s.root / "slurm-201.out")


def _symlinked_directory(s: Setup) -> None:
    # The job's StdOut directory is itself a link to a root-only directory.
    secret = _secret_outside(s.tmp)
    (s.root / "out").symlink_to(secret.parent)
    os.rename(secret, secret.parent / "slurm-201.out")


REFUSALS: list[tuple[str, Callable[[Setup], None], str, str | None, bool]] = [
    # (case, make the bad file, reason expected, StdOut under root if not slurm-201.out, root)
    ("symlink out of the root", _symlink_out_of_root, "a symbolic link", None, False),
    ("symlink to a root-only file", _symlink_to_root_only, "a symbolic link", None, False),
    ("symlink inside the root", _symlink_in_root, "a symbolic link", None, False),
    ("FIFO", _fifo, "a FIFO", None, False),
    ("socket", _socket, "a socket", None, False),
    ("character device like /dev/zero", _device, "a character device", None, True),
    ("directory", _directory, "a directory", None, False),
    ("file owned by another user", _other_owner, f"owned by uid {OTHER_UID}", None, True),
    ("root-owned file in a user's job", _root_owned, "owned by root", None, True),
    ("hard link to a root-only file", _hard_link_to_root_only, "owned by root", None, True),
    ("symlinked directory to a root-only one", _symlinked_directory, "owned by root", "out", True),
]


@pytest.mark.parametrize(
    ("make", "reason", "subdir", "root_only"),
    [pytest.param(*case[1:], id=case[0]) for case in REFUSALS],
)
def test_a_hostile_file_is_refused_counted_and_logged_once(
    setup: Setup,
    caplog: pytest.LogCaptureFixture,
    *,
    make: Callable[[Setup], None],
    reason: str,
    subdir: str | None,
    root_only: bool,
) -> None:
    if root_only and not ROOT:
        pytest.skip("needs root (chown, mknod, files of other users)")
    make(setup)
    stdout = setup.root / (subdir or "") / "slurm-201.out"
    bad = _save(setup.repository, "201", stdout)
    with caplog.at_level(logging.WARNING, logger="hpcsync.ingest"):
        stats = setup.ingest(bad)
        soon = setup.ingest(bad)
        setup.now += timedelta(seconds=RETRY_FIRST_SECONDS)
        again = setup.ingest(bad)
    assert (stats.refused, stats.failures) == (1, 1)
    assert soon.refused == 0  # not retried on every tick ...
    assert again.refused == 1  # ... but tried again while the job runs ...
    warnings = [r.getMessage() for r in caplog.records if "slurm-201.out" in r.getMessage()]
    assert len(warnings) == 1 and reason in warnings[0], warnings  # ... but logged once
    assert _values(setup.repository, bad) == {}
    setup.good_is_exact()
    ended = setup.ingester.finish([bad])
    assert ended.refused == 1
    assert all(run_id != bad.id for run_id, _, _ in setup.ingester.files)  # given up at the end
    assert setup.ingest().failures == 0


def test_unknown_user_refuses_every_file(setup: Setup) -> None:
    _write(setup.root / "slurm-202.out", "step=1 secret=42\n")
    bad = setup.run("202", user="no-such-user-hpcsync")
    stats = setup.ingest(bad)
    assert stats.refused == 1
    assert _values(setup.repository, bad) == {}
    setup.good_is_exact()


def test_binary_garbage_around_good_lines(setup: Setup) -> None:
    garbage = random.Random(6).randbytes(256 * 1024)
    _write(setup.root / "slurm-203.out", garbage + b"\nstep=7 loss=3\n" + garbage[:999] + b"\n")
    run = setup.run("203")
    stats = setup.ingest(run)
    assert stats.failures == 0
    assert _values(setup.repository, run, "loss") == {"loss@7": 3.0}
    setup.good_is_exact()


def test_nul_bytes(setup: Setup) -> None:
    data = (
        b"\x00\x00\x00step=1 lo\x00ss=1\n\x00" * 3
        + b'{"step": 2, "bad\\u0000name": 5, "acc": 0.5}\n'
        + b'{"step": 2, "lone\\ud800surrogate": 5, "tab\\tname": 1}\n'
        + b"step=3 na\x00me\x00=2 acc=0.75\n"
    )
    _write(setup.root / "slurm-204.out", data)
    run = setup.run("204")
    stats = setup.ingest(run)
    assert stats.failures == 0
    values = _values(setup.repository, run)
    assert values["loss@1"] == 1.0 and values["acc@2"] == 0.5 and values["acc@3"] == 0.75
    assert not any("\x00" in key for key in values)
    setup.good_is_exact()


def test_a_30_mb_line_is_skipped_and_counted(setup: Setup) -> None:
    path = setup.root / "slurm-205.out"
    with path.open("wb") as handle:
        handle.write(b"step=1 loss=9\n")
        handle.write(b"x=1 " * (30 * 1024 * 1024 // 4))
        handle.write(b"\nstep=2 loss=8\n")
    _own(path)
    run = setup.run("205")
    stats = IngestStats()
    for _ in range(20):  # read in budgeted chunks
        stats.add(setup.ingest(run))
    assert stats.skipped_lines == 1 and stats.failures == 0
    assert _values(setup.repository, run) == {"loss@1": 9.0, "loss@2": 8.0}
    setup.good_is_exact()


def test_nan_inf_1e309_and_hex_values_are_dropped(setup: Setup) -> None:
    lines = [
        "step=1 a=nan b=inf c=-inf d=1e309 e=0x1F f=-Infinity g=NaN ok=1.5",
        json.dumps({"step": 2, "ok": 2.5})[:-1] + ', "x": NaN, "y": Infinity, "z": 1e309}',
        "step=3 ok=1e308 h=0xdeadbeef",
    ]
    _write(setup.root / "slurm-206.out", "\n".join(lines) + "\n")
    run = setup.run("206")
    stats = setup.ingest(run)
    assert stats.failures == 0
    assert _values(setup.repository, run) == {"ok@1": 1.5, "ok@2": 2.5, "ok@3": 1e308}
    setup.good_is_exact()


def test_invalid_utf8(setup: Setup) -> None:
    # Decoded with U+FFFD. A pair spoilt by it makes its line prose (no metric), as designed;
    # the same bytes elsewhere on a line leave its pairs whole.
    data = (
        b"step=1 loss=1 \xff\xfe\xc3=2\n"
        b"\xed\xa0\x80step=2 loss=2\n"
        b"\xc3\x28 \xe2\x82 step=3 loss=3\n"
        b"step=4 loss=4 \xff\n"
        b'{"step": 5, "loss": 5, "note": "\xff\xfe"}\n'
    )
    _write(setup.root / "slurm-207.out", data)
    run = setup.run("207")
    stats = setup.ingest(run)
    assert stats.failures == 0
    values = _values(setup.repository, run, "loss")
    assert values == {"loss@3": 3.0, "loss@4": 4.0, "loss@5": 5.0}
    setup.good_is_exact()


def test_file_deleted_between_reads_and_while_open(setup: Setup) -> None:
    path = _write(setup.root / "slurm-208.out", "step=1 loss=1\n")
    run = setup.run("208")
    setup.ingest(run)
    path.unlink()
    assert setup.ingest(run).failures == 0  # gone: nothing to read, no error
    _write(path, "step=2 loss=2\nstep=3 loss=3\n")  # a new file at the same name
    stats = setup.ingest(run)
    assert stats.failures == 0 and stats.restarts == 1
    assert _values(setup.repository, run, "loss") == {"loss@1": 1.0, "loss@2": 2.0, "loss@3": 3.0}
    setup.good_is_exact()


def test_file_unlinked_while_being_read(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(setup.root / "slurm-209.out", "".join(f"step={i} loss={i}\n" for i in range(9)))
    run = setup.run("209")
    real_pread = os.pread
    inode = path.stat().st_ino

    def unlink_then_read(fd: int, size: int, offset: int) -> bytes:
        if os.fstat(fd).st_ino == inode and path.exists():
            path.unlink()  # removed under the open descriptor: its bytes stay readable
        return real_pread(fd, size, offset)

    monkeypatch.setattr(os, "pread", unlink_then_read)
    stats = setup.ingest(run)
    monkeypatch.undo()
    assert stats.failures == 0
    assert len(_values(setup.repository, run, "loss")) == 9
    setup.good_is_exact()


def test_truncated_and_grown(setup: Setup) -> None:
    path = _write(setup.root / "slurm-210.out", "step=1 loss=5\nstep=2 loss=4\n")
    run = setup.run("210")
    setup.ingest(run)
    _write(path, "step=1 loss=0.5\n" + "step=2 loss=0.4 pad=" + "0" * 100 + "\nstep=3 loss=0.3\n")
    stats = setup.ingest(run)
    assert stats.restarts == 1
    assert _values(setup.repository, run, "loss") == {"loss@1": 0.5, "loss@2": 0.4, "loss@3": 0.3}
    setup.good_is_exact()


@needs_root
def test_permission_denied_for_an_unprivileged_daemon(database_url: str) -> None:
    # Root reads everything, so the daemon runs as `nobody` in a child; the jobs are root's.
    shared = Path(tempfile.mkdtemp(prefix="hpcsync-perm-"))
    try:
        os.chmod(shared, 0o777)
        url = database_url
        if url.startswith("sqlite"):
            url = f"sqlite:///{shared / 'tracking.db'}"
        made = Repository.from_url(url)
        made.ensure_schema()
        made.dispose()
        for item in shared.iterdir():
            os.chown(item, 65534, 65534)
        root = shared / "logs"
        root.mkdir(mode=0o755)
        _write(root / "slurm-211.out", "step=1 secret=42\n", uid=0).chmod(0o600)
        _write(root / "slurm-212.out", "step=1 loss=1\n", uid=0).chmod(0o644)
        report = _as_nobody(lambda out: _child_ingest(url, str(root), out))
    finally:
        shutil.rmtree(shared)
    assert report["failures"] == 1 and report["refused"] == 0, report
    assert report["denied"] == {}
    assert report["open"] == {"loss@1": 1.0}


def _as_nobody(work: Callable[[int], None]) -> dict[str, Any]:
    """Return what `work` wrote as JSON to the descriptor, run in a child as uid 65534."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            work(write)
            code = 0
        except BaseException:
            os.write(write, traceback.format_exc().encode())
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, text
    report: dict[str, Any] = json.loads(text)
    return report


def _child_ingest(url: str, root: str, out: int) -> None:
    repository = Repository.from_url(url)
    closed = _save(repository, "211", Path(root) / "slurm-211.out", user="root")
    opened = _save(repository, "212", Path(root) / "slurm-212.out", user="root")
    ingester = LogIngester(repository, roots=[root], observer="polling", clock=lambda: READ_AT)
    ingester.track([closed, opened])
    stats = ingester.ingest()
    report: dict[str, Any] = {
        "failures": stats.failures,
        "refused": stats.refused,
        "denied": _values(repository, closed),
        "open": _values(repository, opened),
    }
    ingester.close()
    repository.dispose()
    os.write(out, json.dumps(report).encode())
