"""The command line: help, exit codes, one-line errors, and the daemon's clean stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcsync.cli import build_parser, main

FAKE_SCONTROL = """#!/bin/sh
printf 'ClusterName             = fakecluster\\nSLURM_VERSION           = 22.05.8\\nAccountingStoreFlags    = job_comment\\n'
"""


def _fake_slurm(directory: Path, squeue_body: str = "exit 0") -> Path:
    directory.mkdir(exist_ok=True)
    for name, body in (
        ("scontrol", FAKE_SCONTROL),
        ("squeue", f"#!/bin/sh\n{squeue_body}\n"),
        ("sacct", "#!/bin/sh\nexit 0\n"),
    ):
        path = directory / name
        path.write_text(body)
        path.chmod(0o755)
    return directory


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    config = tmp_path / "config.toml"
    config.write_text(
        f'state_dir = "{tmp_path}"\n[slurm]\nbackend = "cli"\npoll_interval = 1\ncatchup_days = 0\n'
    )
    bin_dir = _fake_slurm(tmp_path / "bin")
    values = {
        "HPCSYNC_CONFIG": str(config),
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    return {**os.environ, **values}


def test_every_command_has_help_text() -> None:
    parser = build_parser()
    subparsers = next(
        a for a in parser._actions if isinstance(a, type(parser._subparsers._group_actions[0]))
    )  # type: ignore[union-attr]
    for name, sub in subparsers.choices.items():  # type: ignore[attr-defined]
        assert sub.format_help(), name
        for action in sub._actions:
            assert action.help, f"{name} {action.dest} has no help"
    helps = {choice.dest: choice.help for choice in subparsers._choices_actions}  # type: ignore[attr-defined]
    assert all(helps.values()) and set(helps) >= {
        "run",
        "sync",
        "check",
        "db",
        "backfill",
        "runs",
        "show",
        "sample",
    }


def test_an_invalid_config_exits_2_with_one_line(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[slurm]\npoll_interval = "x"\nbogus = 1\n')
    assert main(["-c", str(bad), "sync"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "slurm.poll_interval" in err and "slurm.bogus: unknown key" in err


def test_sync_then_runs_and_show_on_an_empty_cluster(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sync"]) == 0
    assert main(["runs", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["show", "42"]) == 1
    assert "no run for job 42" in capsys.readouterr().err


def test_an_unreachable_slurm_exits_1_naming_the_cause(
    env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _fake_slurm(
        tmp_path / "bin",
        "echo 'squeue: error: Unable to contact slurm controller (connect failure)' >&2; exit 1",
    )
    assert main(["sync"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hpcsync:")]
    assert len(errors) == 1
    assert "squeue" in errors[0] and "Unable to contact slurm controller" in errors[0]


def test_missing_slurm_programs_exit_1(
    env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert main(["sync"]) == 1
    assert "not found on PATH" in capsys.readouterr().err


def test_an_unreachable_database_exits_1_naming_the_cause(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HPCSYNC_DATABASE__URL", "postgresql+psycopg://u:secret@127.0.0.1:1/none")
    monkeypatch.setenv("HPCSYNC_DATABASE__CONNECT_TIMEOUT", "1")
    assert main(["sync"]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("hpcsync:")]
    assert len(errors) == 1 and "schema" in errors[0] and "secret" not in err


def test_check_reports_each_dependency(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["db", "upgrade"]) == 0
    code = main(["check"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "✓ config" in out and "✓ database" in out and "Slurm 22.05.8, cluster fakecluster" in out
    assert "✓ job comments in sacct" in out


def test_check_warns_when_sacct_keeps_no_comments(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bin" / "scontrol").write_text(
        "#!/bin/sh\nprintf 'ClusterName = c\\nSLURM_VERSION = 22.05.8\\nAccountingStoreFlags = (null)\\n'\n"
    )
    main(["db", "upgrade"])
    capsys.readouterr()
    assert main(["check"]) == 0
    assert (
        "! job comments in sacct: AccountingStoreFlags lacks job_comment" in capsys.readouterr().out
    )


def test_check_fails_when_slurm_is_down(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bin" / "scontrol").write_text(
        "#!/bin/sh\necho 'slurm_load_ctl_conf error' >&2\nexit 1\n"
    )
    assert main(["check"]) == 1
    assert "✗ slurm" in capsys.readouterr().out


def test_bad_usage_exits_2() -> None:
    with pytest.raises(SystemExit) as caught:
        main(["backfill", "--since", "yesterday-ish"])
    assert caught.value.code == 2


def test_the_daemon_stops_cleanly_on_sigterm(env: dict[str, str], tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "hpcsync", "run"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        lines.append(line)
        if "polled" in line:
            break
    else:
        process.kill()
        process.stderr.close()
        pytest.fail("daemon never polled: " + "".join(lines))
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    rest = process.stderr.read()
    process.stderr.close()
    assert "stopping" in rest and "hpcsync stopped" in rest


def test_journald_lines_carry_priority_prefixes(env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hpcsync", "sync"],
        check=False,
        env={**env, "JOURNAL_STREAM": "8:1234", "PATH": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("<3>hpcsync: scontrol") and "not found on PATH" in lines[-1]
    assert all(line[:3] in ("<3>", "<4>", "<6>", "<7>") for line in lines), lines


def test_a_config_with_a_password_readable_by_others_draws_a_warning(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "secret.toml"
    config.write_text(
        f'state_dir = "{tmp_path}"\n[database]\nurl = "postgresql+psycopg://u:hunter2@127.0.0.1:1/x"\n'
    )
    config.chmod(0o644)
    main(["-c", str(config), "runs"])
    err = capsys.readouterr().err
    assert "readable" in err and "hunter2" not in err
    config.chmod(0o600)
    main(["-c", str(config), "runs"])
    assert "readable" not in capsys.readouterr().err
