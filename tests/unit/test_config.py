"""Settings: defaults, the TOML file, environment overrides, and every problem at once."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from hpcsync.config import Settings, load_settings
from hpcsync.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config.example.toml"


def _keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys |= _keys(annotation, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


def _flatten(data: dict[str, object], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, value in data.items():
        if isinstance(value, dict):
            keys |= _flatten(value, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


def test_every_field_has_a_description() -> None:
    def walk(model: type[BaseModel]) -> None:
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no description"
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
                walk(info.annotation)

    walk(Settings)


def test_the_example_config_shows_every_key_and_loads() -> None:
    with EXAMPLE.open("rb") as handle:
        example = tomllib.load(handle)
    assert _flatten(example) == _keys(Settings)
    load_settings(EXAMPLE)


def test_the_example_config_comments_every_key() -> None:
    lines = EXAMPLE.read_text().splitlines()
    for number, line in enumerate(lines):
        if "=" in line and not line.lstrip().startswith("#") and not line.startswith("["):
            assert "#" in lines[number - 1] or "#" in line, f"key without comment: {line}"


def test_defaults_need_no_file() -> None:
    settings = load_settings(None)
    assert settings.slurm.backend == "auto" and settings.slurm.poll_interval == 30
    assert settings.database_url.startswith("sqlite:///")


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[database]\nurl = "sqlite:///file.db"\n[slurm]\npoll_interval = 10\n')
    monkeypatch.setenv("HPCSYNC_DATABASE__URL", "sqlite:///env.db")
    settings = load_settings(path)
    assert settings.database.url == "sqlite:///env.db"
    assert settings.slurm.poll_interval == 10


def test_every_problem_is_reported_at_once_naming_each_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        'colour = "red"\n[slurm]\npoll_interval = "soon"\nbackend = "rest"\n[logs]\nobserver = "x"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert "\n" not in message
    for key in ("colour: unknown key", "slurm.poll_interval", "slurm.backend", "logs.observer"):
        assert key in message
    assert caught.value.exit_code == 2


def test_broken_toml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[slurm\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(path)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_settings(tmp_path / "absent.toml")
