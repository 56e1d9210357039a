"""digest.send_at: a draft the editor scheduled is sent by a worker when this time comes

Revision ID: 0005_send_at
Revises: 0004_desk
Create Date: 2026-11-29 15:15:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0005_send_at"
down_revision: str | None = "0004_desk"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("digest") as batch:
        batch.add_column(sa.Column("send_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("digest") as batch:
        batch.drop_column("send_at")
