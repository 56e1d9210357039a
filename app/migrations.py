"""Apply Alembic migrations programmatically (the only way the schema changes)."""

from __future__ import annotations

from alembic.config import Config

from alembic import command
from app.config import ROOT
from app.db import ensure_sqlite_folder


def alembic_config(database_url: str) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "alembic"))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logger"] = False
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    ensure_sqlite_folder(database_url)
    command.upgrade(alembic_config(database_url), revision)
