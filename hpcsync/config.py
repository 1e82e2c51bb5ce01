"""Settings: a TOML file, overridden by `HPCSYNC_<SECTION>__<KEY>` environment variables."""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from hpcsync.errors import ConfigError

SYSTEM_CONFIG = Path("/etc/hpcsync/config.toml")


def default_state_dir() -> str:
    """Return systemd's StateDirectory, /var/lib/hpcsync for root, else ~/.local/state/hpcsync."""
    if state := os.environ.get("STATE_DIRECTORY"):
        return state.split(":", 1)[0]
    if os.geteuid() == 0:
        return "/var/lib/hpcsync"
    return str(Path.home() / ".local" / "state" / "hpcsync")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class DatabaseSettings(_Section):
    url: str = Field(
        default="",
        description="SQLAlchemy URL of the tracking database; empty means SQLite at state_dir/hpcsync.db.",
    )
    connect_timeout: float = Field(
        default=10.0, gt=0, description="Seconds to wait for the database to accept a connection."
    )


class SlurmSettings(_Section):
    backend: Literal["auto", "cli", "pyslurm"] = Field(
        default="auto",
        description="How to talk to Slurm: pyslurm when it imports and matches, else the CLI.",
    )
    poll_interval: float = Field(
        default=30.0, ge=1, description="Seconds between two polls of the scheduler."
    )
    track_untagged: bool = Field(
        default=False,
        description="Also record jobs with no experiment tag, under the experiment named by the job name.",
    )
    command_timeout: float = Field(
        default=60.0,
        gt=0,
        description="Seconds before a squeue, sacct or scontrol call is abandoned.",
    )
    max_backoff: float = Field(
        default=600.0,
        ge=1,
        description="Longest wait, in seconds, between polls while Slurm fails.",
    )
    usage_interval: float = Field(
        default=300.0,
        ge=0,
        description="Seconds between sstat reads of running jobs' CPU and memory; 0 turns them off.",
    )
    catchup_days: float = Field(
        default=7.0,
        ge=0,
        description="At a first start with an empty database, import jobs that ended this many days back.",
    )


class LogSettings(_Section):
    roots: list[str] = Field(
        default_factory=list,
        description="Directories on shared storage that hold job logs and GPU sample files.",
    )
    observer: Literal["auto", "inotify", "polling"] = Field(
        default="auto",
        description="How to notice log growth: inotify for local disks, polling for NFS/Lustre/GPFS.",
    )
    poll_interval: float = Field(
        default=5.0,
        gt=0,
        description="Seconds between stat() checks of live log files when polling.",
    )
    max_line_bytes: int = Field(
        default=65536, ge=256, description="Lines longer than this are skipped and counted."
    )
    patterns: list[str] = Field(
        default_factory=list,
        description="Extra regular expressions for metric lines, with named groups name/value/step.",
    )


class Settings(BaseSettings):
    """The whole configuration; every key has a default."""

    model_config = SettingsConfigDict(
        env_prefix="HPCSYNC_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
        case_sensitive=False,
    )

    cluster_name: str = Field(
        default="", description="Name stored in runs.cluster; empty means Slurm's ClusterName."
    )
    state_dir: str = Field(
        default_factory=default_state_dir,
        description="Directory for the default SQLite database and the daemon's lock file.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Least severe level of the daemon's own log lines."
    )
    database: DatabaseSettings = Field(
        default_factory=DatabaseSettings, description="The tracking database."
    )
    slurm: SlurmSettings = Field(default_factory=SlurmSettings, description="The scheduler.")
    logs: LogSettings = Field(
        default_factory=LogSettings, description="Job logs on shared storage."
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's values arrive as init kwargs; the environment overrides them.
        return (env_settings, init_settings)

    @property
    def database_url(self) -> str:
        """Return the configured URL, or the default SQLite file under state_dir."""
        return self.database.url or f"sqlite:///{Path(self.state_dir) / 'hpcsync.db'}"


def find_config(explicit: str | None) -> Path | None:
    """Return the config file to read: --config, $HPCSYNC_CONFIG, the system file, or None."""
    if explicit:
        return Path(explicit)
    if env := os.environ.get("HPCSYNC_CONFIG"):
        return Path(env)
    if SYSTEM_CONFIG.is_file():
        return SYSTEM_CONFIG
    return None


def load_settings(path: Path | None) -> Settings:
    """Return validated settings from the file and the environment; raises ConfigError."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with path.open("rb") as handle:
                data = tomllib.load(handle)
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config {path} is not valid TOML: {exc}") from exc
    try:
        return Settings(**data)
    except ValidationError as exc:
        where = f" in {path}" if path else ""
        problems = "; ".join(_describe(error) for error in exc.errors())
        count = exc.error_count()
        raise ConfigError(f"invalid config{where} ({count} problem(s)): {problems}") from exc


def _describe(error: Any) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    return f"{key}: {error['msg']}"


def warn_if_world_readable(path: Path | str | None) -> str | None:
    """Return a one-line warning if the config file holds a database password others can read."""
    if path is None:
        return None
    try:
        with open(path, "rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError):
        return None  # load_settings reports it
    database = data.get("database")
    url = database.get("url") if isinstance(database, dict) else None
    if not isinstance(url, str) or not mode & 0o044:
        return None
    try:
        password = urlsplit(url).password
    except ValueError:
        return None
    if not password:
        return None
    who = "everyone" if mode & 0o004 else "its group"
    return (
        f"config {path} holds a database password and is readable by {who} "
        f"(mode {stat.S_IMODE(mode):04o}); run chmod 600 or pass the URL in HPCSYNC_DATABASE__URL"
    )
