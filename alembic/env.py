"""Alembic environment: migrations run with a sync driver against DATABASE_URL."""

from logging.config import fileConfig

from sqlalchemy import create_engine, pool
from sqlmodel import SQLModel

from alembic import context
from app import models  # noqa: F401  (registers every table on the metadata)
from app.config import get_settings
from app.db import is_sqlite, sync_url
from app.migrations import include_object

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = SQLModel.metadata


def run_migrations_online() -> None:
    database_url = config.attributes.get("database_url") or get_settings().database_url
    engine = create_engine(sync_url(database_url), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            # SQLite cannot ALTER most things: batch mode recreates the table instead.
            render_as_batch=is_sqlite(database_url),
            compare_type=True,
            include_object=include_object,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported: run `newsletter migrate`")
run_migrations_online()
