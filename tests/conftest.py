"""Shared fixtures: the tracking database on SQLite and on PostgreSQL."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from hpcsync.db.repository import Repository

POSTGRES_ENV = "HPCSYNC_TEST_POSTGRES_URL"
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
# One database per pytest process, so two test runs on one server never empty each other's.
SESSION_TAG = f"{os.getpid()}"
TEST_DATABASE = "hpcsync_test"
_created: list[str] = []


def _postgres_admin_url() -> tuple[str, bool]:
    """Return the server URL to use and whether it was asked for explicitly (then it must work)."""
    explicit = os.environ.get(POSTGRES_ENV)
    return (explicit or DEFAULT_POSTGRES), bool(explicit)


def _require(reason: str, required: bool) -> None:
    if required:
        pytest.fail(reason)
    pytest.skip(reason)


def postgres_database(name: str) -> str:
    """Return the URL of this session's database `name`, created if missing and emptied."""
    name = f"{name}_{SESSION_TAG}"
    admin_url, required = _postgres_admin_url()
    try:
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            exists = connection.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            ).scalar()
            if not exists:
                connection.execute(text(f"CREATE DATABASE {name}"))
                _created.append(name)
        admin.dispose()
    except (OperationalError, ImportError) as exc:
        _require(f"PostgreSQL not reachable at {admin_url}: {str(exc).splitlines()[0]}", required)
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    reset_postgres(url)
    return url


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Undo the handlers `hpcsync.cli.main` installs, so no test logs into a closed stream."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def make_postgres_database() -> Iterator[Callable[[str], str]]:
    """Return a function that gives the URL of an emptied database of that name."""
    yield postgres_database
    _drop_created()


def _drop_created() -> None:
    if not _created:
        return
    admin = create_engine(_postgres_admin_url()[0], isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        for name in _created:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()
    _created.clear()


@pytest.fixture(scope="session")
def postgres_url(make_postgres_database: Callable[[str], str]) -> str:
    """Return the URL of this session's test database on the PostgreSQL server."""
    return make_postgres_database(TEST_DATABASE)


def reset_postgres(url: str) -> None:
    """Drop everything in the database's public schema."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Return the URL of an empty tracking database, once per supported backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tracking.db'}"
    url: str = request.getfixturevalue("postgres_url")
    reset_postgres(url)
    return url


@pytest.fixture
def repository(database_url: str) -> Iterator[Repository]:
    """Return a repository on an empty database with the schema applied."""
    repo = Repository.from_url(database_url)
    repo.ensure_schema()
    yield repo
    repo.dispose()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under HPCSYNC_REQUIRE_SLURM=1 (as in CI) a skipped test fails: CI must run every test."""
    outcome = yield
    report = outcome.get_result()
    if (
        os.environ.get("HPCSYNC_REQUIRE_SLURM") == "1"
        and report.skipped
        and not hasattr(report, "wasxfail")
    ):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"skipped while HPCSYNC_REQUIRE_SLURM=1: {reason}"
