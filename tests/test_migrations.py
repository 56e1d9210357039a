"""The migrations and the models describe the same schema (what `alembic check` verifies)."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, pool, text
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


def test_0007_names_the_digest_of_each_earlier_unsubscribe(tmp_path: Path) -> None:
    """The unsubscribes already recorded get the digest of the reader's last copy before them
    (none when they had none), as new ones do."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    migrations.upgrade(url, "0006_event_index")
    engine = create_engine(url, poolclass=pool.NullPool)
    now = "2026-11-01 10:00:00.000000"
    with engine.begin() as conn:
        for n in (1, 2):
            conn.execute(
                text(
                    "INSERT INTO subscriber (id, email, email_hash, language, status, cadence,"
                    " topics, created_at, updated_at) VALUES (:n, :email, :hash, 'fr',"
                    " 'unsubscribed', 'weekly', '[]', :now, :now)"
                ),
                {"n": n, "email": f"r{n}@example.org", "hash": f"h{n}", "now": now},
            )
        for digest_id, sent_at in ((7, "2026-11-02 10:00:00.000000"), (8, None)):
            conn.execute(
                text(
                    "INSERT INTO digest (id, subject, status, created_at, recipients) VALUES"
                    " (:id, 'S', 'sent', :now, 1)"
                ),
                {"id": digest_id, "now": now},
            )
            conn.execute(
                text(
                    "INSERT INTO delivery (kind, digest_id, subscriber_id, status, attempts,"
                    " next_attempt_at, created_at, sent_at) VALUES ('digest', :d, 1, :status, 1,"
                    " :now, :now, :sent)"
                ),
                {
                    "d": digest_id,
                    "status": "sent" if sent_at else "skipped",
                    "now": now,
                    "sent": sent_at,
                },
            )
        for subscriber_id in (1, 2):
            conn.execute(
                text(
                    "INSERT INTO subscriber_event (subscriber_id, created_at, event) VALUES"
                    " (:s, '2026-11-03 10:00:00.000000', 'unsubscribed')"
                ),
                {"s": subscriber_id},
            )
    migrations.upgrade(url)
    with engine.connect() as conn:
        named = conn.execute(
            text("SELECT subscriber_id, digest_id FROM subscriber_event ORDER BY subscriber_id")
        ).all()
    engine.dispose()
    assert [tuple(row) for row in named] == [(1, 7), (2, None)]
