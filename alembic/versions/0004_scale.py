"""A send whose cost does not grow with the queue: index-ordered claim, per-digest tallies

Revision ID: 0004_scale
Revises: 0004_ops
Create Date: 2026-11-29 13:45:00.000000

Claim: `ix_delivery_claim (status, next_attempt_at)` made PostgreSQL read every queued row and
sort them on disk for each 200-row claim (1M queued: 2.4 s a claim). Two partial indexes
replace it: queued rows in claim order `(next_attempt_at, id)`, so a claim reads the first rows
of the index and stops; and rows being sent by `lease_until`, so expired leases are found by a
small query of their own.

Subscribers: indexes for the look-ups of the API and the desk at a million rows (newest first,
of all or of one status; name prefix, case-insensitive; by address is the unique email_hash).

Tallies: `digest_tally` holds signed counts of a digest's copies per status, written by
triggers in the transaction that changes a row (INSERT or a status UPDATE on `delivery`), so
progress is a sum over a few rows instead of a GROUP BY over every delivery. Triggers insert
rows and never update one, so two workers recording at once never wait on each other; the
worker folds old rows together (app.digests.tally). A DELETE of deliveries does not touch the
tally: figures outlive the rows (retention). Test copies (kind 'test') are not counted.

PostgreSQL: one statement-level trigger per INSERT / UPDATE over its transition tables (one
tally row per status a statement changed, whatever the number of rows). SQLite (one writer at a
time, no statement triggers): row triggers adding to the row of the same digest, status and
millisecond.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0004_scale"
down_revision: str | None = "0004_ops"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PG_FUNCTION = """
CREATE FUNCTION digest_tally_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO digest_tally (digest_id, status, n, created_at)
        SELECT digest_id, status, count(*), now() FROM new_rows
        WHERE kind = 'digest' AND digest_id IS NOT NULL
        GROUP BY digest_id, status;
    ELSE
        INSERT INTO digest_tally (digest_id, status, n, created_at)
        SELECT digest_id, status, sum(n), now() FROM (
            SELECT n.digest_id, n.status, 1 AS n FROM new_rows n JOIN old_rows o USING (id)
            WHERE n.status <> o.status AND n.kind = 'digest' AND n.digest_id IS NOT NULL
            UNION ALL
            SELECT o.digest_id, o.status, -1 FROM new_rows n JOIN old_rows o USING (id)
            WHERE n.status <> o.status AND o.kind = 'digest' AND o.digest_id IS NOT NULL
        ) AS changed
        GROUP BY digest_id, status
        HAVING sum(n) <> 0;
    END IF;
    RETURN NULL;
END
$$
"""
PG_TRIGGERS = (
    "CREATE TRIGGER delivery_tally_insert AFTER INSERT ON delivery "
    "REFERENCING NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION digest_tally_changes()",
    "CREATE TRIGGER delivery_tally_update AFTER UPDATE ON delivery "
    "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION digest_tally_changes()",
)

# SQLAlchemy's text format for datetimes on SQLite, to the millisecond ('now' is the same for
# every row of one statement, so a statement adds to one row per status).
_SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f', 'now')"


def _sqlite_add(row: str, delta: int) -> str:
    match = f"digest_id = {row}.digest_id AND status = {row}.status AND created_at = {_SQLITE_NOW}"
    return (
        f"UPDATE digest_tally SET n = n + ({delta}) WHERE {match};\n"
        f"INSERT INTO digest_tally (digest_id, status, n, created_at) "
        f"SELECT {row}.digest_id, {row}.status, {delta}, {_SQLITE_NOW} "
        f"WHERE NOT EXISTS (SELECT 1 FROM digest_tally WHERE {match});\n"
    )


SQLITE_TRIGGERS = (
    "CREATE TRIGGER delivery_tally_insert AFTER INSERT ON delivery "
    "WHEN NEW.kind = 'digest' AND NEW.digest_id IS NOT NULL BEGIN\n"
    f"{_sqlite_add('NEW', 1)}END",
    "CREATE TRIGGER delivery_tally_update AFTER UPDATE OF status ON delivery "
    "WHEN NEW.status IS NOT OLD.status AND NEW.kind = 'digest' AND NEW.digest_id IS NOT NULL "
    f"BEGIN\n{_sqlite_add('OLD', -1)}{_sqlite_add('NEW', 1)}END",
)


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.drop_index("ix_delivery_claim", table_name="delivery")
    op.create_index(
        "ix_delivery_queued",
        "delivery",
        ["next_attempt_at", "id"],
        postgresql_where=sa.text("status = 'queued'"),
        sqlite_where=sa.text("status = 'queued'"),
    )
    op.create_index(
        "ix_delivery_leased",
        "delivery",
        ["lease_until"],
        postgresql_where=sa.text("status = 'sending'"),
        sqlite_where=sa.text("status = 'sending'"),
    )
    # Subscriber look-ups at a million rows: newest first (all, or of one status), name prefix.
    op.create_index("ix_subscriber_newest", "subscriber", ["created_at", "id"])
    op.create_index("ix_subscriber_status_newest", "subscriber", ["status", "created_at", "id"])
    if dialect == "postgresql":
        op.execute(
            "CREATE INDEX ix_subscriber_name_prefix ON subscriber (lower(name) text_pattern_ops)"
        )
    else:
        op.execute("CREATE INDEX ix_subscriber_name_prefix ON subscriber (lower(name))")
    op.create_table(
        "digest_tally",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("digest_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["digest_id"], ["digest.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_digest_tally_digest", "digest_tally", ["digest_id", "status", "created_at"])
    # The figures of digests sent before this revision.
    op.execute(
        "INSERT INTO digest_tally (digest_id, status, n, created_at) "
        "SELECT digest_id, status, count(*), CURRENT_TIMESTAMP FROM delivery "
        "WHERE kind = 'digest' AND digest_id IS NOT NULL GROUP BY digest_id, status"
    )
    if dialect == "postgresql":
        op.execute(PG_FUNCTION)
        for statement in PG_TRIGGERS:
            op.execute(statement)
    else:
        for statement in SQLITE_TRIGGERS:
            op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.execute(
        "DROP TRIGGER IF EXISTS delivery_tally_update"
        + (" ON delivery" if dialect == "postgresql" else "")
    )
    op.execute(
        "DROP TRIGGER IF EXISTS delivery_tally_insert"
        + (" ON delivery" if dialect == "postgresql" else "")
    )
    if dialect == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS digest_tally_changes()")
    op.drop_index("ix_digest_tally_digest", table_name="digest_tally")
    op.drop_table("digest_tally")
    op.execute("DROP INDEX ix_subscriber_name_prefix")
    op.drop_index("ix_subscriber_status_newest", table_name="subscriber")
    op.drop_index("ix_subscriber_newest", table_name="subscriber")
    op.drop_index("ix_delivery_leased", table_name="delivery")
    op.drop_index("ix_delivery_queued", table_name="delivery")
    op.create_index("ix_delivery_claim", "delivery", ["status", "next_attempt_at"])
