"""A PostgreSQL database of its own for one benchmark run: created, migrated, dropped."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import migrations  # noqa: E402


def _plain(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextmanager
def scratch_database(server_url: str, *, prefix: str = "nl_bench") -> Iterator[str]:
    """A fresh, migrated database on the server `server_url` points at (its own database is
    used only to connect): benchmarks never write into a database they were given."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(_plain(server_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    database_url = make_url(server_url).set(drivername="postgresql", database=name)
    url = database_url.render_as_string(hide_password=False)
    try:
        migrations.upgrade(url)
        yield url
    finally:
        with psycopg.connect(_plain(server_url), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]
