"""Per-digest figures kept as deliveries change (`digest_tally`, written by database triggers:
see migration 0004_scale): a progress read sums a few rows, whatever the size of the send.

Triggers only insert, so rows pile up while a digest is sent (one or two per recorded batch);
the worker folds the rows older than the rate window into one per digest and status.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from app.models import DeliveryStatus, DigestTally


@dataclass
class Tally:
    counts: dict[str, int] = field(default_factory=dict)
    sent_since: int = 0  # copies recorded sent since the `since` asked for


async def read_tallies(
    session: AsyncSession, *, digest_ids: Sequence[int], since: datetime
) -> dict[int, Tally]:
    """Counts per status of each digest's copies (test copies not counted), and how many were
    recorded sent since `since` (index range on `ix_digest_tally_digest`)."""
    tallies: dict[int, Tally] = defaultdict(Tally)
    if not digest_ids:
        return tallies
    recent = sa.and_(col(DigestTally.n) > 0, col(DigestTally.created_at) >= since)
    rows = await session.execute(
        sa.select(
            col(DigestTally.digest_id),
            col(DigestTally.status),
            sa.func.sum(col(DigestTally.n)),
            sa.func.coalesce(sa.func.sum(col(DigestTally.n)).filter(recent), 0),
        )
        .where(col(DigestTally.digest_id).in_(list(digest_ids)))
        .group_by(col(DigestTally.digest_id), col(DigestTally.status))
    )
    for digest_id, status, count, recently in rows.all():
        tally = tallies[digest_id]
        tally.counts[status] = int(count)
        if status == DeliveryStatus.sent:
            tally.sent_since = int(recently)
    return tallies


async def fold_tallies(
    session: AsyncSession, *, before: datetime, seconds_from: datetime | None = None
) -> list[int]:
    """Fold the rows older than `before` (the figures do not change); returns the digests
    folded. Rows older than `seconds_from` (default: `before`) become one per digest and
    status; rows from `seconds_from` to `before` one per digest, status, sign and second, so
    that the rate over that window stays right to the second while a long send's progress
    read sums a few hundred rows instead of tens of thousands. A fold with nothing to do
    reads one small table."""
    table = DigestTally.__table__  # type: ignore[attr-defined]
    dialect = session.get_bind().dialect.name
    keys = _fold_keys(table.c, seconds_from or before, dialect)
    several = (
        sa.select(table.c.digest_id)
        .where(table.c.created_at < before)
        .group_by(table.c.digest_id, table.c.status, *keys)
        .having(sa.func.count() > 1)
        .distinct()
    )
    digest_ids = list((await session.execute(several)).scalars().all())
    if not digest_ids:
        return []
    which = sa.and_(table.c.created_at < before, table.c.digest_id.in_(digest_ids))
    columns = ["digest_id", "status", "n", "created_at"]
    if dialect == "postgresql":
        # One statement: what a concurrent transaction adds is either moved or left, never lost.
        moved = sa.delete(table).where(which).returning(*table.c).cte("moved")
        sums = _sums(moved, moved.c, _fold_keys(moved.c, seconds_from or before, dialect))
        await session.execute(sa.insert(table).from_select(columns, sums))
        return digest_ids
    # SQLite: one writer at a time. The INSERT takes the write lock, so the DELETE after it
    # sees the rows it summed, and no others: rows added later are newer than `before`.
    last = (await session.execute(sa.select(sa.func.max(table.c.id)))).scalar_one()
    which = sa.and_(which, table.c.id <= last)
    await session.execute(
        sa.insert(table).from_select(columns, _sums(table, table.c, keys).where(which))
    )
    await session.execute(sa.delete(table).where(which))
    return digest_ids


def _fold_keys(c: Any, seconds_from: datetime, dialect: str) -> tuple[Any, Any]:
    """What a folded row is per, besides digest and status: nothing before `seconds_from`;
    the second and the sign of `n` after it (the rate counts the positive `sent` rows)."""
    old = c.created_at < seconds_from
    if dialect == "postgresql":
        second = sa.func.date_trunc("second", c.created_at)
    else:  # SQLite keeps datetimes as text: "YYYY-MM-DD HH:MM:SS.ffffff"
        second = sa.func.substr(c.created_at, 1, 19)
    return (
        sa.case((old, None), else_=second),
        sa.case((old, 0), (c.n > 0, 1), else_=-1),
    )


def _sums(source: sa.FromClause, c: Any, keys: tuple[Any, Any]) -> Any:
    return (
        sa.select(c.digest_id, c.status, sa.func.sum(c.n), sa.func.max(c.created_at))
        .select_from(source)
        .group_by(c.digest_id, c.status, *keys)
    )
