"""editor, editor_session: the desk's accounts and server-side sessions; subscriber indexes

Revision ID: 0004_desk
Revises: 0004_archive
Create Date: 2026-11-29 14:00:00.000000

Sessions live in the database (not in a signed cookie) so that removing an editor or resetting a
password ends every browser they are signed in on: the cascade deletes them.
"""

import logging
from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0004_desk"
down_revision: str | None = "0004_archive"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.runtime.migration")


def upgrade() -> None:
    op.create_table(
        "editor",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("password_hash", sa.String(length=500), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("email"),
    )
    op.create_table(
        "editor_session",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("editor_id", sa.Integer(), nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["editor_id"], ["editor.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    op.create_index(
        op.f("ix_editor_session_editor_id"), "editor_session", ["editor_id"], unique=False
    )
    # The desk's unsubscribes per day (signups per day: 0004_scale's ix_subscriber_newest).
    op.create_index(
        op.f("ix_subscriber_unsubscribed_at"), "subscriber", ["unsubscribed_at"], unique=False
    )
    op.create_index(
        "ix_subscriber_listed_status",
        "subscriber",
        ["status"],
        unique=False,
        postgresql_where=sa.text("erased_at IS NULL"),
        sqlite_where=sa.text("erased_at IS NULL"),
    )
    op.create_index(
        op.f("ix_bounce_event_created_at"), "bounce_event", ["created_at"], unique=False
    )
    connection = op.get_bind()
    if connection.dialect.name == "postgresql" and _has_trigrams(connection):
        # "Address or name contains": trigram indexes answer LIKE '%part%' without reading a
        # million rows. Expression indexes: outside the models, so autogenerate ignores them.
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        for column in ("email", "name"):
            op.execute(
                f"CREATE INDEX ix_subscriber_{column}_trgm ON subscriber "
                f"USING gin (lower({column}) gin_trgm_ops)"
            )


def _has_trigrams(connection: sa.Connection) -> bool:
    available = connection.execute(
        sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm'")
    ).first()
    if available is None:
        log.warning("pg_trgm is not available: searching subscribers reads the whole table")
    return available is not None


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_subscriber_email_trgm")
    op.execute("DROP INDEX IF EXISTS ix_subscriber_name_trgm")
    op.drop_index(op.f("ix_bounce_event_created_at"), table_name="bounce_event")
    op.drop_index("ix_subscriber_listed_status", table_name="subscriber")
    op.drop_index(op.f("ix_subscriber_unsubscribed_at"), table_name="subscriber")
    op.drop_index(op.f("ix_editor_session_editor_id"), table_name="editor_session")
    op.drop_table("editor_session")
    op.drop_table("editor")
