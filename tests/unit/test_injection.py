"""Injection and secrets: hostile job names and comments stored verbatim, no shell, no SQL text
built from values, and database passwords kept out of every log line and config file."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from hpcsync.config import warn_if_world_readable
from hpcsync.db import tables
from hpcsync.db.repository import Repository
from hpcsync.models import Job, JobState, Run, RunStatus
from hpcsync.slurm.formats import SQUEUE_FIELDS
from hpcsync.slurm.parsers import parse_squeue
from hpcsync.tracking import parse_comment

PACKAGE = Path(__file__).resolve().parents[2] / "hpcsync"
SUBMITTED = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
PASSWORD = "Sup3r-S3cret-pw"

HOSTILE = [
    "'); DROP TABLE runs;--",
    'Robert"); DELETE FROM metrics WHERE ("1"="1',
    "a;b;c",
    "ünïcødé 训练 🚀",
    "back\\slash %s %(x)s {0} $HOME `id` $(id)",
    'quote\'s "double"',
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_names_are_stored_verbatim(repository: Repository, text: str) -> None:
    job = Job(
        job_id="77",
        job_id_raw=77,
        name=text,
        state=JobState.RUNNING,
        comment=f"experiment={text!r}",
        user_name="ana",
        account=text,
        submitted_at=SUBMITTED,
    )
    run = Run(
        cluster="test",
        experiment=text,
        job=job,
        status=RunStatus.RUNNING,
        name=text,
        tags={text: text},
    )
    repository.save_runs([(run, False, [])], SUBMITTED)
    [loaded] = repository.runs_for_jobs("test", ["77"])
    assert (loaded.experiment, loaded.name, loaded.job.account) == (text, text, text)
    assert (loaded.job.name, loaded.job.comment) == (text, f"experiment={text!r}")
    assert loaded.tags == {text: text}
    with repository.atomic() as connection:  # the tables are all still there
        row = connection.execute(
            select(tables.runs.c.job_name, tables.experiments.c.name).join(tables.experiments)
        ).one()
        assert tuple(row) == (text, text)
        assert connection.execute(select(func.count()).select_from(tables.metrics)).scalar() == 0


def test_a_crafted_squeue_line_is_parsed_field_by_field() -> None:
    comment = "experiment=\"x'); DROP TABLE runs;--\" run='a|b; c' tags=ü,$(id)"
    values = {name: "N/A" for name in SQUEUE_FIELDS}
    values |= {
        "JobArrayID": "12",
        "JobID": "12",
        "ArrayJobID": "12",
        "Name": "'); DROP TABLE runs;--",
        "State": "RUNNING",
        "UserName": "ana",
        "NumNodes": "1",
        "NumCPUs": "1",
        "SubmitTime": "2026-11-22T19:53:29",
        "WorkDir": "/tmp/a;b",
        "RestartCnt": "0",
        "Comment": comment,
    }
    line = "|".join(values[name] for name in SQUEUE_FIELDS) + "|"
    [job] = parse_squeue(line + "\n", UTC)
    assert job.name == "'); DROP TABLE runs;--"
    assert job.comment == comment
    assert job.work_dir == "/tmp/a;b"
    tag = parse_comment(job.comment)
    assert tag is not None
    assert tag.experiment == "x'); DROP TABLE runs;--"
    assert tag.run_name == "a|b; c"
    assert tag.tags == {"ü": "", "$(id)": ""}


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_shell_anywhere() -> None:
    offenders = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.keyword) and node.arg == "shell":
                offenders.append(f"{path}:{node.lineno}")
            if (
                isinstance(node, ast.Attribute)
                and node.attr in {"system", "popen"}
                and isinstance(node.value, ast.Name)
                and node.value.id == "os"
            ):
                offenders.append(f"{path}:{node.lineno}")
    assert offenders == []


_SQL_WORDS = ("SELECT ", "INSERT ", "UPDATE ", "DELETE ", " WHERE ", "DROP ", "CREATE ")


def test_no_sql_text_built_from_values() -> None:
    """No f-string, %-format, .format() or + builds text that looks like SQL."""
    offenders = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            literal: object
            if isinstance(node, ast.JoinedStr):
                literal = "".join(
                    part.value
                    for part in node.values
                    if isinstance(part, ast.Constant) and isinstance(part.value, str)
                )
            elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add):
                side = node.left
                literal = side.value if isinstance(side, ast.Constant) else ""
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "format"
                and isinstance(node.func.value, ast.Constant)
            ):
                literal = node.func.value.value
            else:
                continue
            if isinstance(literal, str) and any(w in literal.upper() for w in _SQL_WORDS):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {literal!r}")
    assert offenders == []


def _hpcsync(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hpcsync", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg://hpcsync:{PASSWORD}@127.0.0.1:1/none",  # nothing listens
        f"postgresql+psycopg://nosuchuser:{PASSWORD}@127.0.0.1:5432/none",  # refused login
        f"postgresql+psycopg://hpcsync:{PASSWORD}@no-such-host.invalid/none",
    ],
    ids=["port closed", "login refused", "unknown host"],
)
def test_database_passwords_never_reach_a_log_line(tmp_path: Path, url: str) -> None:
    env = {
        **os.environ,
        "HPCSYNC_CONFIG": str(tmp_path / "none.toml"),
        "HPCSYNC_DATABASE__URL": url,
        "HPCSYNC_DATABASE__CONNECT_TIMEOUT": "2",
        "HPCSYNC_STATE_DIR": str(tmp_path),
        "HPCSYNC_LOG_LEVEL": "DEBUG",
        "PATH": str(tmp_path / "no-slurm"),  # Slurm fails fast too
    }
    (tmp_path / "none.toml").write_text("")
    for command in (["sync"], ["check"], ["runs"], ["db", "upgrade"]):
        done = _hpcsync(*command, env=env)
        assert done.returncode == 1, (command, done.stderr)
        assert done.stderr.strip(), command
        assert PASSWORD not in done.stderr + done.stdout, (command, done.stderr)


def test_a_readable_config_with_a_password_draws_a_warning(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[database]\nurl = "postgresql://hpcsync:{PASSWORD}@db/track"\n')
    config.chmod(0o644)
    warning = warn_if_world_readable(config)
    assert warning is not None and "readable by everyone" in warning
    assert PASSWORD not in warning and "\n" not in warning
    config.chmod(0o640)
    assert "readable by its group" in (warn_if_world_readable(config) or "")
    config.chmod(0o600)
    assert warn_if_world_readable(config) is None
    config.chmod(0o644)
    config.write_text('[database]\nurl = "postgresql://hpcsync@db/track"\n')
    assert warn_if_world_readable(config) is None  # no password in it
    assert warn_if_world_readable(None) is None
    assert warn_if_world_readable(tmp_path / "missing.toml") is None
