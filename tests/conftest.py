"""Test fixtures on the real things.

- Every test gets its own database, migrated by Alembic: a copy of a migrated SQLite file, and,
  when TEST_DATABASE_URL is set, a PostgreSQL database cloned from a migrated template
  (`CREATE DATABASE ... TEMPLATE`), dropped afterwards. Tests that take `database_url` run on both.
- A real SMTP server (aiosmtpd) on a free loopback port, whose handler can inject faults.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import make_url
from sqlmodel.ext.asyncio.session import AsyncSession

from app import migrations
from app.config import Settings
from app.main import create_app
from tests.smtp_server import SmtpServer

TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL")


def pytest_configure(config: pytest.Config) -> None:
    # A temporary root of its own per session: pytest's shared default keeps only the last three
    # sessions and would delete the files of a concurrent run (several worktrees test at once).
    if not config.option.basetemp:
        config.option.basetemp = tempfile.mkdtemp(prefix="newsletter-tests-")
        config.stash[_OWN_BASETEMP] = config.option.basetemp


def pytest_unconfigure(config: pytest.Config) -> None:
    own = config.stash.get(_OWN_BASETEMP, None)
    if own:
        shutil.rmtree(own, ignore_errors=True)


_OWN_BASETEMP = pytest.StashKey[str]()
BACKENDS = ["sqlite", *(["postgresql"] if TEST_DATABASE_URL else [])]
SECRET = "test-secret-key-0123456789abcdef"


def _pg_admin_url() -> str:
    assert TEST_DATABASE_URL
    url = make_url(TEST_DATABASE_URL).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def _pg_url_for(database: str) -> str:
    assert TEST_DATABASE_URL
    url = make_url(TEST_DATABASE_URL).set(drivername="postgresql", database=database)
    return url.render_as_string(hide_password=False)


def _pg_execute(sql: str) -> None:
    with psycopg.connect(_pg_admin_url(), autocommit=True) as conn:
        conn.execute(sql)


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    """Commands run in-process (CliRunner) configure the root logger; the next test starts with
    the configuration it had."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    migrations.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    name = f"nl_tpl_{uuid.uuid4().hex[:10]}"
    _pg_execute(f'CREATE DATABASE "{name}"')
    try:
        migrations.upgrade(_pg_url_for(name))
        yield name
    finally:
        _pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path
) -> Iterator[str]:
    if backend == "sqlite":
        path = tmp_path / "test.db"
        shutil.copyfile(sqlite_template, path)
        yield f"sqlite:///{path}"
        return
    template = request.getfixturevalue("pg_template")
    name = f"nl_t_{uuid.uuid4().hex[:12]}"
    _pg_execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield _pg_url_for(name)
    finally:
        _pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A second database of the test's backend with nothing in it, not even the schema (for
    migrations from an old revision, and for restores)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    name = f"nl_e_{uuid.uuid4().hex[:12]}"
    _pg_execute(f'CREATE DATABASE "{name}"')
    try:
        yield _pg_url_for(name)
    finally:
        _pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def make_settings(
    database_url: str, smtp_server: SmtpServer | None, tmp_path: Path, **overrides: Any
) -> Settings:
    values: dict[str, Any] = {
        "app_env": "test",
        "database_url": database_url,
        "secret_key": SECRET,
        "public_url": "http://testserver",
        "site_name": "Dzaleu",
        "mail_from": "Dzaleu <newsletter@dzaleu.test>",
        "maildir_path": tmp_path / "maildir",
        "rate_limit_signup": "1000/minute",
        "signup_min_answer_ms": 0,  # tests/subscriptions/test_signup.py checks the floor on its own
        "send_retry_base_seconds": 0.05,
        "send_retry_max_seconds": 0.2,
        "worker_poll_seconds": 0.05,
        "smtp_timeout_seconds": 5,
        "smtp_data_timeout_seconds": 10,
    }
    if smtp_server is not None:
        values["smtp_host"] = smtp_server.host
        values["smtp_port"] = smtp_server.port
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture
def settings(database_url: str, smtp_server: SmtpServer, tmp_path: Path) -> Settings:
    return make_settings(database_url, smtp_server, tmp_path)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


@pytest.fixture
async def session(app: FastAPI) -> AsyncIterator[AsyncSession]:
    async with app.state.sessionmaker() as s:
        yield s


@pytest.fixture
async def editor_headers(session: AsyncSession) -> dict[str, str]:
    """Authorization headers with a fresh editor API key."""
    from app.editors import create_api_key

    _, key = await create_api_key(session, name="tests")
    await session.commit()
    return {"Authorization": f"Bearer {key}"}
