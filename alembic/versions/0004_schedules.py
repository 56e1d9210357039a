"""schedules: recurring digests, their runs (one per slot), readers' cadence and topics

Revision ID: 0004_schedules
Revises: 0004_adapt
Create Date: 2026-11-29 13:45:00.000000

`schedule_run` has a unique (schedule_id, slot_at): of any number of workers that find a slot
due, one inserts its run and the others insert nothing, so a slot sends one digest at most.
Existing readers get the `weekly` cadence and no topics (every article), which is what they got.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0004_schedules"
down_revision: str | None = "0004_adapt"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "schedule",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("cron", sa.String(length=100), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("cadence", sa.String(length=16), nullable=False),
        sa.Column("min_articles", sa.Integer(), nullable=False),
        sa.Column("max_articles", sa.Integer(), nullable=False),
        sa.Column("categories", sa.JSON(), nullable=False),
        sa.Column("subject", sa.JSON(), nullable=True),
        sa.Column("intro", sa.JSON(), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("active_since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("digest") as batch:
        batch.add_column(sa.Column("cadence", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("schedule_id", sa.Integer(), nullable=True))
        batch.create_index("ix_digest_schedule_id", ["schedule_id"])
        batch.create_foreign_key(
            "fk_digest_schedule_id_schedule",
            "schedule",
            ["schedule_id"],
            ["id"],
            ondelete="SET NULL",
        )
    op.create_table(
        "schedule_run",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("schedule_id", sa.Integer(), nullable=False),
        sa.Column("slot_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("leased_by", sa.String(length=100), nullable=True),
        sa.Column("digest_id", sa.Integer(), nullable=True),
        sa.Column("article_count", sa.Integer(), nullable=False),
        sa.Column("detail", sa.String(length=2000), nullable=True),
        sa.ForeignKeyConstraint(["schedule_id"], ["schedule.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["digest_id"], ["digest.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("schedule_id", "slot_at", name="uq_schedule_run_slot"),
    )
    op.create_index("ix_schedule_run_schedule_id", "schedule_run", ["schedule_id"])
    op.create_index("ix_schedule_run_digest_id", "schedule_run", ["digest_id"])
    with op.batch_alter_table("subscriber") as batch:
        batch.add_column(
            sa.Column("cadence", sa.String(length=16), nullable=False, server_default="weekly")
        )
        batch.add_column(sa.Column("topics", sa.JSON(), nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("subscriber") as batch:
        batch.drop_column("topics")
        batch.drop_column("cadence")
    op.drop_index("ix_schedule_run_digest_id", table_name="schedule_run")
    op.drop_index("ix_schedule_run_schedule_id", table_name="schedule_run")
    op.drop_table("schedule_run")
    with op.batch_alter_table("digest") as batch:
        batch.drop_constraint("fk_digest_schedule_id_schedule", type_="foreignkey")
        batch.drop_index("ix_digest_schedule_id")
        batch.drop_column("schedule_id")
        batch.drop_column("cadence")
    op.drop_table("schedule")
