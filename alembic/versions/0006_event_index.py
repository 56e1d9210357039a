"""subscriber_event (event, created_at): a digest's unsubscribes and bounce reports without
reading every reader's history

Revision ID: 0006_event_index
Revises: 0005_send_at
Create Date: 2026-11-29 17:30:00.000000

`GET /api/v1/digests/{id}` counts the readers who left or bounced after their copy. The events
of a million-reader list are millions of `subscribed` and `confirmed` rows; without this index
every read of a digest's figures scanned them all.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006_event_index"
down_revision: str | None = "0005_send_at"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_subscriber_event_event_created", "subscriber_event", ["event", "created_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_subscriber_event_event_created", table_name="subscriber_event")
