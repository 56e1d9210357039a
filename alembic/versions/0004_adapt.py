"""Deliverability: per-send counters by recipient domain, workers' pace, breaker baselines;
bounce_event.digest_id

Revision ID: 0004_adapt
Revises: 0004_email
Create Date: 2026-11-29 14:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0004_adapt"
down_revision: str | None = "0004_email"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "send_tally",
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("send_id", sa.Integer(), nullable=False),
        sa.Column("domain", sa.String(length=255), nullable=False),
        sa.Column("delivered", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("deferred", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("bounced", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("complaints", sa.Integer(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("kind", "send_id", "domain"),
    )
    op.create_table(
        "send_pace",
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("send_id", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.String(length=100), nullable=False),
        sa.Column("rate_per_second", sa.Float(), nullable=True),
        sa.Column("throttled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("kind", "send_id", "worker_id"),
    )
    op.create_table(
        "send_breaker",
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("send_id", sa.Integer(), nullable=False),
        sa.Column("delivered", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("bounced", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("complaints", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("rebased_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("kind", "send_id"),
    )
    # Nullable, added in place (no table copy on SQLite).
    op.add_column("bounce_event", sa.Column("digest_id", sa.Integer(), nullable=True))
    op.create_index(op.f("ix_bounce_event_digest_id"), "bounce_event", ["digest_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_bounce_event_digest_id"), table_name="bounce_event")
    with op.batch_alter_table("bounce_event") as batch_op:
        batch_op.drop_column("digest_id")
    op.drop_table("send_breaker")
    op.drop_table("send_pace")
    op.drop_table("send_tally")
