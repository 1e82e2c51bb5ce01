"""The shipped systemd units: they verify, and the system unit's exposure is 2.0 or less.

`systemd-analyze verify` and `security --offline=yes` read unit files without a running systemd.
verify insists that ExecStart's program exists, so each unit is checked as a copy whose program
path (and nothing else) points at a stub. A drop-in is checked appended to its unit, which is
how systemd reads drop-ins.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "systemd"
SYSTEM_UNIT = UNITS / "hpcsync.service"
USER_UNIT = UNITS / "hpcsync-user.service"
READ_ALL_LOGS = UNITS / "hpcsync.service.d" / "read-all-logs.conf"
PROGRAM = "/opt/hpcsync/bin/hpcsync"
USER_PROGRAM = "%h/.local/bin/hpcsync"
MAX_EXPOSURE = 2.0
_EXPOSURE = re.compile(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)")


def settings(text: str) -> dict[str, list[str]]:
    """Return every `Key=value` assignment of a unit file, values in order."""
    found: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.fixture(scope="module")
def analyze() -> str:
    """Return the path of systemd-analyze; skip (or fail under HPCSYNC_REQUIRE_SLURM=1) if absent."""
    path = shutil.which("systemd-analyze")
    if path is None:
        reason = "systemd-analyze not found (apt-get install systemd; scripts/bootstrap does)"
        if os.environ.get("HPCSYNC_REQUIRE_SLURM") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def _run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", **(env or {})},
    )


def _stub(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)


def _system_copy(tmp_path: Path, *drop_ins: Path) -> Path:
    """Return a copy of the system unit (with drop-ins appended) whose program is a stub."""
    stub = tmp_path / "bin" / "hpcsync"
    _stub(stub)
    text = SYSTEM_UNIT.read_text()
    assert f"ExecStart={PROGRAM} run" in text
    parts = [text.replace(PROGRAM, str(stub)), *(d.read_text() for d in drop_ins)]
    unit = tmp_path / "unit" / "hpcsync.service"
    unit.parent.mkdir()
    unit.write_text("\n".join(parts))
    return unit


def _exposure(analyze: str, unit: Path, *options: str, env: dict[str, str] | None = None) -> float:
    result = _run([analyze, *options, "security", "--offline=yes", "--no-pager", str(unit)], env)
    assert result.returncode == 0, result.stdout + result.stderr
    found = _EXPOSURE.search(result.stdout)
    assert found, result.stdout
    return float(found.group(1))


def test_the_system_unit_verifies(analyze: str, tmp_path: Path) -> None:
    result = _run([analyze, "verify", "--man=no", str(_system_copy(tmp_path))])
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_the_system_unit_exposure_is_at_most_2(analyze: str, tmp_path: Path) -> None:
    assert _exposure(analyze, _system_copy(tmp_path)) <= MAX_EXPOSURE


def test_the_read_all_logs_drop_in_verifies_and_stays_at_most_2(
    analyze: str, tmp_path: Path
) -> None:
    unit = _system_copy(tmp_path, READ_ALL_LOGS)
    result = _run([analyze, "verify", "--man=no", str(unit)])
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    assert _exposure(analyze, unit) <= MAX_EXPOSURE


def test_the_user_unit_verifies(analyze: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    _stub(home / ".local" / "bin" / "hpcsync")
    (tmp_path / "runtime").mkdir(mode=0o700)
    unit = tmp_path / "unit" / "hpcsync.service"
    unit.parent.mkdir()
    unit.write_text(USER_UNIT.read_text())
    env = {"HOME": str(home), "XDG_RUNTIME_DIR": str(tmp_path / "runtime")}
    result = _run([analyze, "--user", "verify", "--man=no", str(unit)], env)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_the_system_unit_is_a_hardened_notify_service() -> None:
    unit = settings(SYSTEM_UNIT.read_text())
    expected = {
        "Type": ["notify"],
        "NotifyAccess": ["main"],
        "ExecStart": [f"{PROGRAM} run"],
        "ExecReload": ["/bin/kill -HUP $MAINPID"],
        "Restart": ["on-failure"],
        "User": ["hpcsync"],
        "StateDirectory": ["hpcsync"],
        "ProtectSystem": ["strict"],
        "ProtectHome": ["read-only"],
        "NoNewPrivileges": ["yes"],
        "PrivateTmp": ["yes"],
        "CapabilityBoundingSet": [""],
        "AmbientCapabilities": [""],
    }
    assert {key: unit.get(key) for key in expected} == expected
    assert "@system-service" in unit["SystemCallFilter"]
    assert unit["WatchdogSec"] and unit["EnvironmentFile"] == ["-/etc/hpcsync/secrets.env"]


def test_the_drop_in_adds_only_cap_dac_read_search() -> None:
    assert settings(READ_ALL_LOGS.read_text()) == {
        "CapabilityBoundingSet": ["CAP_DAC_READ_SEARCH"],
        "AmbientCapabilities": ["CAP_DAC_READ_SEARCH"],
    }


def test_the_user_unit_runs_as_its_user_under_the_home_directory() -> None:
    unit = settings(USER_UNIT.read_text())
    assert "User" not in unit and "DynamicUser" not in unit
    assert unit["ExecStart"] == [f"{USER_PROGRAM} run"]
    assert unit["Type"] == ["notify"] and unit["StateDirectory"] == ["hpcsync"]
    assert unit["Environment"][0] == "HPCSYNC_CONFIG=%E/hpcsync/config.toml"
