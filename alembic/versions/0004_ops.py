"""Alerts, audit log, worker heartbeats, consecutive feed failures

Revision ID: 0004_ops
Revises: 0004_schedules
Create Date: 2026-11-29 14:00:00.000000

New tables only, plus two nullable or defaulted columns added in place (no table copy on
SQLite, no rewrite of `delivery` on PostgreSQL 11+).
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0004_ops"
down_revision: str | None = "0004_schedules"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "alert_incident",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("key", sa.String(length=200), nullable=False, unique=True),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        _ts("opened_at"),
        _ts("resolved_at", nullable=True),
        sa.Column("times_opened", sa.Integer(), nullable=False),
        _ts("told_at", nullable=True),
        sa.Column("webhook_status", sa.String(length=16), nullable=False),
        sa.Column("webhook_attempts", sa.Integer(), nullable=False),
        _ts("webhook_next_at", nullable=True),
        sa.Column("webhook_error", sa.String(length=500), nullable=True),
    )
    op.create_index(op.f("ix_alert_incident_webhook_status"), "alert_incident", ["webhook_status"])
    op.create_table(
        "audit_event",
        sa.Column("id", sa.Integer(), primary_key=True),
        _ts("created_at"),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target_type", sa.String(length=32), nullable=True),
        sa.Column("target_id", sa.String(length=200), nullable=True),
        sa.Column("detail", sa.String(length=2000), nullable=True),
    )
    op.create_index(op.f("ix_audit_event_created_at"), "audit_event", ["created_at"])
    op.create_index(op.f("ix_audit_event_action"), "audit_event", ["action"])
    op.create_table(
        "worker_heartbeat",
        sa.Column("worker_id", sa.String(length=100), primary_key=True),
        _ts("started_at"),
        _ts("seen_at"),
    )
    op.create_index(op.f("ix_worker_heartbeat_seen_at"), "worker_heartbeat", ["seen_at"])
    op.add_column("delivery", sa.Column("alert_id", sa.Integer(), nullable=True))
    op.create_index(op.f("ix_delivery_alert_id"), "delivery", ["alert_id"])
    op.add_column("feed", sa.Column("failures", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("feed") as batch_op:
        batch_op.drop_column("failures")
    op.drop_index(op.f("ix_delivery_alert_id"), table_name="delivery")
    with op.batch_alter_table("delivery") as batch_op:
        batch_op.drop_column("alert_id")
    op.drop_index(op.f("ix_worker_heartbeat_seen_at"), table_name="worker_heartbeat")
    op.drop_table("worker_heartbeat")
    op.drop_index(op.f("ix_audit_event_action"), table_name="audit_event")
    op.drop_index(op.f("ix_audit_event_created_at"), table_name="audit_event")
    op.drop_table("audit_event")
    op.drop_index(op.f("ix_alert_incident_webhook_status"), table_name="alert_incident")
    op.drop_table("alert_incident")
