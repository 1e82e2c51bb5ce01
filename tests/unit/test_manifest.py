"""Run manifests: the parser, its one-line errors, and `hpcsync manifest` writing one in a job."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from hpcsync.manifest import (
    Manifest,
    ManifestError,
    add_manifest_arguments,
    default_directory,
    format_manifest,
    git_state,
    is_manifest_name,
    manifest_command,
    manifest_name,
    parse_manifest,
    parse_param,
    parse_seed,
)

SHA = "0f3c2d1e4b5a69788796a5b4c3d2e1f00f1e2d3c"


def test_a_full_manifest() -> None:
    text = json.dumps(
        {
            "version": 1,
            "params": {"lr": "0.1", "batch_size": 64, "warmup": 0.05, "amp": True, "note": None},
            "git_sha": SHA.upper(),
            "git_dirty": False,
            "seed": 1234,
            "written_by": "a newer template",
        }
    )
    manifest = parse_manifest(text)
    assert manifest == Manifest(
        params={"lr": "0.1", "batch_size": "64", "warmup": "0.05", "amp": "true"},
        git_sha=SHA,
        git_dirty=False,
        seed=1234,
    )
    assert manifest.run_params() == {
        "lr": "0.1",
        "batch_size": "64",
        "warmup": "0.05",
        "amp": "true",
        "git_sha": SHA,
        "git_dirty": "false",
        "seed": "1234",
    }


def test_every_key_is_optional() -> None:
    assert parse_manifest("{}") == Manifest()
    assert parse_manifest('{"params": null, "git_sha": "", "seed": ""}') == Manifest()
    assert Manifest().run_params() == {}


def test_values_become_text() -> None:
    params = {"big": 10**30, "tiny": 1e-8, "list": [1, "a"], "map": {"b": 1, "a": 2}, "s": ""}
    assert parse_manifest(json.dumps({"params": params})).params == {
        "big": "1000000000000000000000000000000",
        "tiny": "1e-08",
        "list": '[1,"a"]',
        "map": '{"a":2,"b":1}',
        "s": "",
    }


@pytest.mark.parametrize(
    ("value", "seed"),
    [(7, 7), ("42", 42), (" -3 ", -3), (5.0, 5), (2**63 - 1, 2**63 - 1), (None, None), ("", None)],
)
def test_seeds(value: object, seed: int | None) -> None:
    assert parse_seed(value) == seed


@pytest.mark.parametrize("value", [True, 1.5, "0x10", "seven", 2**63, [1], {"a": 1}])
def test_bad_seeds(value: object) -> None:
    with pytest.raises(ManifestError, match="seed must be a 64-bit integer"):
        parse_seed(value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not JSON"),
        ('{"params": {"lr": 0.1}', "not JSON"),
        ("[1, 2]", "not a JSON object but a list"),
        ('"lr=0.1"', "not a JSON object but a string"),
        ('{"version": 0}', "version must be a positive integer"),
        ('{"version": "1"}', "version must be a positive integer"),
        ('{"params": [["lr", 0.1]]}', "params must be an object, not a list"),
        ('{"params": {"": 1}}', "empty name"),
        ('{"params": {"a\\nb": 1}}', "control characters"),
        ('{"params": {"seed": 1}}', "'seed' belongs at the top level"),
        ('{"params": {"git_sha": "abc1234"}}', "'git_sha' belongs at the top level"),
        ('{"git_sha": "not-a-sha"}', "git_sha must be 7 to 64 hex digits"),
        ('{"git_sha": 1234567}', "git_sha must be 7 to 64 hex digits"),
        ('{"git_dirty": "yes"}', "git_dirty must be true or false"),
        ('{"seed": "twelve"}', "seed must be a 64-bit integer"),
    ],
)
def test_bad_manifests_are_one_line_errors(text: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message) as caught:
        parse_manifest(text)
    assert "\n" not in str(caught.value)


def test_limits() -> None:
    with pytest.raises(ManifestError, match="at most 1000"):
        parse_manifest(json.dumps({"params": {f"p{i}": i for i in range(1001)}}))
    with pytest.raises(ManifestError, match="longer than 6000"):
        parse_manifest(json.dumps({"params": {"long": "x" * 6001}}))
    with pytest.raises(ManifestError, match="longer than 250"):
        parse_manifest(json.dumps({"params": {"k" * 251: 1}}))


def test_format_reads_back() -> None:
    manifest = Manifest(params={"lr": "0.1", "name": 'a "b" ü'}, git_sha=SHA, seed=-1)
    text = format_manifest(manifest)
    assert parse_manifest(text) == manifest
    assert json.loads(text)["version"] == 1
    assert "git_dirty" not in json.loads(text)


def test_names() -> None:
    assert manifest_name("1234") == "hpcsync-1234.run.json"
    assert manifest_name("1234_7") == "hpcsync-1234_7.run.json"
    assert is_manifest_name("hpcsync-1234_7.run.json")
    for name in ("hpcsync-1234-node1.gpu.jsonl", "hpcsync-x.run.json", "hpcsync-1.run.json.tmp"):
        assert not is_manifest_name(name)


def test_params_from_the_command_line() -> None:
    assert parse_param("lr=0.1") == ("lr", "0.1")
    assert parse_param("expr=a=b") == ("expr", "a=b")
    assert parse_param("empty=") == ("empty", "")
    with pytest.raises(ManifestError, match="is not NAME=VALUE"):
        parse_param("lr")
    with pytest.raises(ManifestError, match="empty name"):
        parse_param("=1")
    with pytest.raises(ManifestError, match="top level"):
        parse_param("seed=1")


def _git(directory: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(directory), *args], capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def _checkout(tmp_path: Path) -> Path:
    code = tmp_path / "code"
    code.mkdir()
    _git(code, "init", "-q")
    (code / "train.py").write_text("print('step=1 loss=1')\n")
    _git(code, "add", "train.py")
    _git(code, "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-qm", "init")
    return code


def test_git_state_of_a_checkout(tmp_path: Path) -> None:
    code = _checkout(tmp_path)
    head = _git(code, "rev-parse", "HEAD")
    assert git_state(str(code)) == (head, False)
    (code / "train.py").write_text("print('changed')\n")
    assert git_state(str(code)) == (head, True)


def test_git_state_without_a_checkout_or_git(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    assert git_state(str(tmp_path)) == (None, None)
    assert "not a git checkout" in caplog.text

    def no_git(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
        raise FileNotFoundError(2, "No such file or directory", "git")

    assert git_state(str(tmp_path), no_git) == (None, None)


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_manifest_arguments(parser)
    return parser.parse_args(argv)


def test_the_command_writes_the_jobs_manifest(tmp_path: Path) -> None:
    code = _checkout(tmp_path)
    env = {"SLURM_ARRAY_JOB_ID": "40", "SLURM_ARRAY_TASK_ID": "3", "SLURM_JOB_ID": "44"}
    args = _args(
        "--param",
        "lr=0.1",
        "--param",
        "layers=4",
        "--seed",
        "1003",
        "--git-dir",
        str(code),
        "--output",
        f"{tmp_path}/hpcsync-%j.run.json",
    )
    assert manifest_command(args, env) == 0
    written = tmp_path / "hpcsync-40_3.run.json"
    manifest = parse_manifest(written.read_text())
    assert manifest == Manifest(
        params={"lr": "0.1", "layers": "4"},
        git_sha=_git(code, "rev-parse", "HEAD"),
        git_dirty=False,
        seed=1003,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["code", "hpcsync-40_3.run.json"]


def test_the_default_directory_is_the_logs(tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "train-5.out"
    log_file.parent.mkdir()
    log_file.write_text("")
    link = tmp_path / "fd1"
    link.symlink_to(log_file)
    env = {"SLURM_SUBMIT_DIR": "/submit"}
    assert default_directory(env, str(link)) == str(tmp_path / "logs")
    link.unlink()
    link.symlink_to("pipe:[1234]")
    assert default_directory(env, str(link)) == "/submit"
    assert default_directory({}, str(tmp_path / "none")) == os.getcwd()


def test_the_command_reports_bad_input_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"SLURM_JOB_ID": "77"}
    output = ("--output", f"{tmp_path}/hpcsync-%j.run.json")
    assert manifest_command(_args("--param", "x=1", *output), env) == 0
    assert parse_manifest((tmp_path / "hpcsync-77.run.json").read_text()).params == {"x": "1"}
    assert manifest_command(_args("--param", "x", *output), env) == 2
    assert manifest_command(_args("--seed", "abc", *output), env) == 2
    missing = tmp_path / "missing" / "m.json"
    assert manifest_command(_args("--output", str(missing)), env) == 1
    errors = [
        line
        for line in capsys.readouterr().err.splitlines()
        if line.startswith("hpcsync manifest: ")  # not the log lines a handler may print
    ]
    assert len(errors) == 3, errors
    assert "'x' is not NAME=VALUE" in errors[0]
    assert "seed must be a 64-bit integer" in errors[1]
    assert errors[2].startswith(f"hpcsync manifest: cannot write {missing}: ")
