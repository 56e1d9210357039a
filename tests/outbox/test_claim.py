"""The claim reads the head of an index, never sorting the queue (issue 11: with a million
queued rows a sorted claim cost 2.4 s a batch and made a send quadratic)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from app.db import sync_url
from app.models import utcnow
from app.outbox import queue as outbox
from tests.factories import make_sender

QUEUED = 5_000  # enough rows that sorting them all would be the planner's cheaper choice


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(sync_url(database_url), poolclass=sa.pool.NullPool)
    yield engine
    engine.dispose()


def _fill_queue(connection: sa.Connection) -> None:
    """QUEUED queued rows, as many already sent, a few being sent with an expired lease;
    statistics fresh, as after `send_digest`."""
    series = (
        "generate_series(1, :n) AS i"
        if connection.dialect.name == "postgresql"
        else "(WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < :n) "
        "SELECT i FROM s)"
    )
    insert = (
        "INSERT INTO delivery (kind, language, status, attempts, next_attempt_at, lease_until, "
        f"created_at) SELECT 'confirmation', 'fr', :status, 0, :at, :lease, :at FROM {series}"
    )
    now = utcnow()
    for status, n, lease in (
        ("sent", QUEUED, None),
        ("queued", QUEUED, None),
        ("sending", 50, now - timedelta(minutes=5)),
    ):
        connection.execute(
            sa.text(insert),
            {"status": status, "n": n, "at": now - timedelta(minutes=1), "lease": lease},
        )
    connection.execute(sa.text("ANALYZE delivery"))


def _plan(connection: sa.Connection, statement: sa.Update) -> str:
    compiled = statement.compile(dialect=connection.dialect)
    if connection.dialect.name == "postgresql":
        rows = connection.exec_driver_sql(f"EXPLAIN {compiled}", compiled.params).all()
        return "\n".join(row[0] for row in rows)
    params = tuple(compiled.params[name] for name in compiled.positiontup or ())
    rows = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", params).all()
    return "\n".join(str(row[-1]) for row in rows)


def test_claim_reads_an_index_in_claim_order_and_never_sorts(
    app: FastAPI, engine: sa.Engine
) -> None:
    with engine.begin() as connection:
        _fill_queue(connection)
        expired, queued = outbox.claim_statements(
            worker_id="w",
            limit=200,
            lease_seconds=60,
            only=make_sender(app).kinds.claim_filter(),
            now=utcnow(),
            dialect=connection.dialect.name,
        )
        queued_plan, expired_plan = _plan(connection, queued), _plan(connection, expired)
    if engine.dialect.name == "postgresql":
        assert "Sort" not in queued_plan, queued_plan
        assert "ix_delivery_queued" in queued_plan, queued_plan
        assert "Sort" not in expired_plan, expired_plan
        assert "ix_delivery_leased" in expired_plan, expired_plan
        # The claimed rows are found by primary key, never by reading the whole table (the
        # sent rows of every earlier send included).
        for plan in (queued_plan, expired_plan):
            assert "Seq Scan" not in plan, plan
            assert "delivery_pkey" in plan, plan
    else:
        assert "TEMP B-TREE" not in queued_plan, queued_plan
        assert "ix_delivery_queued" in queued_plan, queued_plan
        assert "TEMP B-TREE" not in expired_plan, expired_plan
        assert "ix_delivery_leased" in expired_plan, expired_plan
