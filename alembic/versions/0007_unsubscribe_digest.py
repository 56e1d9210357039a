"""subscriber_event.digest_id: an unsubscribe names the digest of the reader's last copy

Revision ID: 0007_unsubscribe_digest
Revises: 0006_event_index
Create Date: 2026-11-29 21:00:00.000000

A digest's "unsubscribed" figure counted the readers who left between their copy and the next
send's start, whoever that send went to: a reader who left while the next digest was still
queued for them, or after a send to other readers (another cadence, a cancelled send) counted
for no digest. An unsubscribe now records the digest of the reader's last copy, as a bounce
does; the events already there get it from the deliveries still kept.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0007_unsubscribe_digest"
down_revision: str | None = "0006_event_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("subscriber_event") as batch:
        batch.add_column(sa.Column("digest_id", sa.Integer(), nullable=True))
    op.execute(
        "UPDATE subscriber_event SET digest_id = ("
        " SELECT d.digest_id FROM delivery AS d"
        " WHERE d.subscriber_id = subscriber_event.subscriber_id AND d.kind = 'digest'"
        " AND d.status = 'sent' AND d.digest_id IS NOT NULL"
        " AND d.sent_at <= subscriber_event.created_at"
        " ORDER BY d.sent_at DESC, d.id DESC LIMIT 1)"
        " WHERE event = 'unsubscribed'"
    )
    op.create_index(
        "ix_subscriber_event_digest",
        "subscriber_event",
        ["digest_id", "event"],
        postgresql_where=sa.text("digest_id IS NOT NULL"),
        sqlite_where=sa.text("digest_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_subscriber_event_digest", table_name="subscriber_event")
    with op.batch_alter_table("subscriber_event") as batch:
        batch.drop_column("digest_id")
