"""The migrations and the models describe the same schema (what `alembic check` verifies)."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, pool
from sqlmodel import SQLModel

from app import (
    migrations,
    models,  # noqa: F401  (registers every table on the metadata)
)
from app.db import sync_url


def test_migrated_database_matches_the_models(database_url: str) -> None:
    engine = create_engine(sync_url(database_url), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection,
                opts={"compare_type": True, "include_object": migrations.include_object},
            )
            assert compare_metadata(context, SQLModel.metadata) == []
    finally:
        engine.dispose()
