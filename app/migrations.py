"""Apply Alembic migrations programmatically (the only way the schema changes)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from alembic.config import Config

from alembic import command
from app.config import ROOT
from app.db import ensure_sqlite_folder

# Indexes only PostgreSQL has (trigram search, 0004_desk): made by the migration, outside the
# models, so autogenerate must not propose to drop them.
DATABASE_ONLY_INDEXES = frozenset({"ix_subscriber_email_trgm", "ix_subscriber_name_trgm"})


def include_object(
    object: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Alembic's filter of what autogenerate compares."""
    return not (type_ == "index" and reflected and name in DATABASE_ONLY_INDEXES)


class MigrationRefused(RuntimeError):
    """A migration that would lose data with the settings it was given; nothing was changed."""


def alembic_config(database_url: str, secret_keys: Sequence[str] | None = None) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "alembic"))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logger"] = False
    if secret_keys is not None:
        # SECRET_KEY, then SECRET_KEY_FALLBACKS: 0003_hashing_key checks the address hashes
        # against them.
        config.attributes["secret_keys"] = list(secret_keys)
    return config


def upgrade(
    database_url: str, revision: str = "head", *, secret_keys: Sequence[str] | None = None
) -> None:
    ensure_sqlite_folder(database_url)
    command.upgrade(alembic_config(database_url, secret_keys), revision)


def head_revision() -> str | None:
    """The newest revision this code knows."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
