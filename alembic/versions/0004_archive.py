"""archive and clicks: digest.archived, click_count, click_seen

Revision ID: 0004_archive
Revises: 0004_scale
Create Date: 2026-11-29 13:45:00.000000

`digest.archived` (true for every existing digest: the archive shows what was sent) lets an editor
leave a digest out of the public archive. `click_count` holds the counters of each digest link
(position -1: the digest as a whole); `click_seen` the keyed tags that make unique counts
possible without keeping who clicked.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0004_archive"
down_revision: str | None = "0004_scale"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("digest") as batch:
        batch.add_column(
            sa.Column("archived", sa.Boolean(), nullable=False, server_default=sa.true())
        )
    op.create_table(
        "click_count",
        sa.Column("digest_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("clicks", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("unique_clicks", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("machine_clicks", sa.Integer(), nullable=False, server_default="0"),
        sa.ForeignKeyConstraint(["digest_id"], ["digest.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("digest_id", "position"),
    )
    op.create_table(
        "click_seen",
        sa.Column("digest_id", sa.Integer(), nullable=False),
        sa.Column("tag", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(["digest_id"], ["digest.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("digest_id", "tag"),
    )
    # The archive lists sent digests newest first.
    op.create_index("ix_digest_archive", "digest", ["status", "archived", "sent_at"])


def downgrade() -> None:
    op.drop_index("ix_digest_archive", table_name="digest")
    op.drop_table("click_seen")
    op.drop_table("click_count")
    with op.batch_alter_table("digest") as batch:
        batch.drop_column("archived")
