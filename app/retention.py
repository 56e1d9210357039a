"""Data that does not grow forever: old delivery rows and soft-bounce history go, in small
batches, each its own short transaction (`newsletter retention run`, and the worker every
RETENTION_INTERVAL).

What goes, after DELIVERY_RETENTION_DAYS:
- the delivery rows of a digest sent (or cancelled) that long ago, test copies included; its
  figures stay (`digest_tally` outlives the rows, so the API shows the same numbers after);
- confirmation emails' delivery rows created that long ago, once settled;
- `soft_bounce` entries of subscribers' histories (a soft bounce changes nothing by itself).
What stays: subscribers and their consent record (when, from where, how), every status change
of their history, bounce events (`bounce_event`), digests and their figures. Erasure is apart
(app.subscribers: it removes personal data at once, whatever the age).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.models import (
    Delivery,
    DeliveryStatus,
    Digest,
    DigestStatus,
    SubscriberEvent,
    SubscriberEventType,
    utcnow,
)

BATCH_ROWS = 5_000  # rows a batch deletes: a few tens of milliseconds of locks
RETENTION_INTERVAL = 3600.0  # seconds between the worker's runs
_UNSETTLED = (DeliveryStatus.queued, DeliveryStatus.sending)


@dataclass
class RetentionResult:
    deliveries: int = 0
    history: int = 0
    digests: int = 0


def cutoff(days: int, *, now: datetime | None = None) -> datetime:
    return (now or utcnow()) - timedelta(days=days)


async def old_digests(session: AsyncSession, *, before: datetime) -> list[int]:
    """Digests sent or cancelled before `before` that still have delivery rows."""
    finished_at = sa.func.coalesce(col(Digest.sent_at), col(Digest.cancelled_at))
    has_rows = select(Delivery.id).where(col(Delivery.digest_id) == col(Digest.id)).exists()
    rows = await session.exec(
        select(Digest.id)
        .where(
            col(Digest.status).in_((DigestStatus.sent, DigestStatus.cancelled)),
            finished_at < before,
            has_rows,
        )
        .order_by(col(Digest.id))
    )
    return [digest_id for digest_id in rows.all() if digest_id is not None]


async def _delete_some(session: AsyncSession, where: sa.ColumnElement[bool], limit: int) -> int:
    some = select(Delivery.id).where(where).limit(limit).scalar_subquery()
    result = await session.execute(
        sa.delete(Delivery)
        .where(col(Delivery.id).in_(some))
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def delete_digest_deliveries(
    session: AsyncSession, *, digest_id: int, limit: int = BATCH_ROWS
) -> int:
    """One batch of a finished digest's delivery rows (by the (digest_id, subscriber_id)
    index); returns how many went, 0 when none is left."""
    settled = col(Delivery.status).not_in(_UNSETTLED)
    return await _delete_some(
        session, sa.and_(col(Delivery.digest_id) == digest_id, settled), limit
    )


async def delete_confirmation_deliveries(
    session: AsyncSession, *, before: datetime, limit: int = BATCH_ROWS
) -> int:
    where = sa.and_(
        col(Delivery.digest_id).is_(None),
        col(Delivery.created_at) < before,
        col(Delivery.status).not_in(_UNSETTLED),
    )
    return await _delete_some(session, where, limit)


async def delete_soft_bounce_history(
    session: AsyncSession, *, before: datetime, limit: int = BATCH_ROWS
) -> int:
    some = (
        select(SubscriberEvent.id)
        .where(
            col(SubscriberEvent.event) == SubscriberEventType.soft_bounce,
            col(SubscriberEvent.created_at) < before,
        )
        .limit(limit)
        .scalar_subquery()
    )
    result = await session.execute(
        sa.delete(SubscriberEvent)
        .where(col(SubscriberEvent.id).in_(some))
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def run_retention(
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    days: int,
    limit: int = BATCH_ROWS,
    progress: Callable[[str, int], None] | None = None,
) -> RetentionResult:
    """Delete what is older than `days`, one batch per transaction (never a long lock, and a
    stop midway keeps what was done). `progress(what, rows)` after each batch."""
    before = cutoff(days)
    result = RetentionResult()

    async def batches(what: str, one: Callable[[AsyncSession], Awaitable[int]]) -> int:
        total = 0
        while True:
            async with sessionmaker() as session:
                gone = await one(session)
                await session.commit()
            total += gone
            if progress is not None and gone:
                progress(what, gone)
            if gone < limit:
                return total

    async with sessionmaker() as session:
        digest_ids = await old_digests(session, before=before)
    for digest_id in digest_ids:

        async def of_digest(session: AsyncSession, digest_id: int = digest_id) -> int:
            return await delete_digest_deliveries(session, digest_id=digest_id, limit=limit)

        result.deliveries += await batches(f"digest {digest_id}", of_digest)
        result.digests += 1

    async def confirmations(session: AsyncSession) -> int:
        return await delete_confirmation_deliveries(session, before=before, limit=limit)

    async def history(session: AsyncSession) -> int:
        return await delete_soft_bounce_history(session, before=before, limit=limit)

    result.deliveries += await batches("confirmations", confirmations)
    result.history += await batches("soft-bounce history", history)
    return result
