"""bounce_event.report_id: a report read from returned mail is applied once

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: bounces from the API, the webhook and SMTP replies have no report. Both steps
    # work in place on SQLite too (no table copy).
    op.add_column("bounce_event", sa.Column("report_id", sa.String(length=200), nullable=True))
    op.create_index(op.f("ix_bounce_event_report_id"), "bounce_event", ["report_id"], unique=True)


def downgrade() -> None:
    op.drop_index(op.f("ix_bounce_event_report_id"), table_name="bounce_event")
    with op.batch_alter_table("bounce_event") as batch_op:
        batch_op.drop_column("report_id")
