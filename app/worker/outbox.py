"""The durable outbox: claim deliveries under a lease, then record what became of each.

Claiming is one UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED) on PostgreSQL, so
any number of workers share the queue without two of them holding the same row; SQLite runs
the same statement atomically (one writer at a time).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import SQLModel, col, or_, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.models import Delivery, DeliveryKind, DeliveryStatus, Digest, DigestStatus, utcnow


@dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    kind: str
    subscriber_id: int | None
    digest_id: int | None
    to_address: str | None
    language: str | None
    attempts: int
    message_id: str | None


_CLAIMED_COLUMNS = (
    col(Delivery.id),
    col(Delivery.kind),
    col(Delivery.subscriber_id),
    col(Delivery.digest_id),
    col(Delivery.to_address),
    col(Delivery.language),
    col(Delivery.attempts),
    col(Delivery.message_id),
)


def _claimable(now: datetime) -> sa.ColumnElement[bool]:
    sendable_digest = select(Digest.id).where(Digest.status == DigestStatus.sending)
    return sa.and_(
        or_(
            sa.and_(
                col(Delivery.status) == DeliveryStatus.queued,
                col(Delivery.next_attempt_at) <= now,
            ),
            # A lease that ran out: its worker died (SIGKILL, lost host). Take the row over.
            sa.and_(
                col(Delivery.status) == DeliveryStatus.sending,
                col(Delivery.lease_until) < now,
            ),
        ),
        or_(
            col(Delivery.digest_id).is_(None),
            # Test copies go out whatever the digest's status (they are how a draft is checked).
            col(Delivery.kind) == DeliveryKind.test,
            col(Delivery.digest_id).in_(sendable_digest),
        ),
    )


async def claim_batch(
    session: AsyncSession,
    *,
    worker_id: str,
    limit: int,
    lease_seconds: int,
    now: datetime | None = None,
) -> list[Claimed]:
    now = now or utcnow()
    ids = (
        select(Delivery.id)
        .where(_claimable(now))
        .order_by(col(Delivery.next_attempt_at), col(Delivery.id))
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    stmt = (
        sa.update(Delivery)
        .where(col(Delivery.id).in_(ids.scalar_subquery()))
        .values(
            status=DeliveryStatus.sending,
            lease_until=now + timedelta(seconds=lease_seconds),
            leased_by=worker_id,
        )
        .returning(*_CLAIMED_COLUMNS)
    )
    rows = (await session.execute(stmt)).all()
    claimed = [Claimed(*row) for row in rows]
    claimed.sort(key=lambda c: c.id)
    return claimed


def _delivery_table() -> sa.Table:
    return SQLModel.metadata.tables["delivery"]


def _held_by(worker_id: str, ids: Sequence[int]) -> sa.ColumnElement[bool]:
    # Only the worker whose lease it is may record an outcome: after a takeover the old
    # holder's late answer must not overwrite the new one's.
    return sa.and_(
        col(Delivery.id).in_(ids),
        col(Delivery.leased_by) == worker_id,
        col(Delivery.status) == DeliveryStatus.sending,
    )


async def set_message_ids(session: AsyncSession, *, pairs: Sequence[tuple[int, str]]) -> None:
    """Store each claimed delivery's stable Message-ID (one executemany per batch), so a bounce
    or a resend can be matched to its delivery."""
    if not pairs:
        return
    table = _delivery_table()  # Core: not the ORM bulk-by-primary-key path
    await session.execute(
        sa.update(table)
        .where(table.c.id == sa.bindparam("delivery_id"))
        .values(message_id=sa.bindparam("mid")),
        [{"delivery_id": i, "mid": mid} for i, mid in pairs],
    )


async def mark_sent(session: AsyncSession, *, worker_id: str, ids: Sequence[int]) -> None:
    """Record accepted messages. The statement's shape never changes (an expanding IN), so it is
    compiled once and cached: this runs every few messages on the hot path."""
    if not ids:
        return
    table = _delivery_table()  # Core, not ORM: this is the hot path's only write
    await session.execute(
        sa.update(table)
        .where(
            table.c.id.in_(ids),
            table.c.leased_by == worker_id,
            table.c.status == DeliveryStatus.sending.value,
        )
        .values(
            status=DeliveryStatus.sent.value,
            sent_at=utcnow(),
            lease_until=None,
            attempts=table.c.attempts + 1,
        )
    )


async def mark_skipped(
    session: AsyncSession, *, worker_id: str, ids: Sequence[int], reason: str
) -> None:
    if not ids:
        return
    await session.execute(
        sa.update(Delivery)
        .where(_held_by(worker_id, ids))
        .values(status=DeliveryStatus.skipped, lease_until=None, last_error=reason[:2000])
        .execution_options(synchronize_session=False)
    )


async def mark_failed(
    session: AsyncSession, *, worker_id: str, delivery_id: int, reply: str
) -> None:
    await session.execute(
        sa.update(Delivery)
        .where(_held_by(worker_id, [delivery_id]))
        .values(
            status=DeliveryStatus.failed,
            lease_until=None,
            attempts=Delivery.attempts + 1,
            last_error=reply[:2000],
        )
        .execution_options(synchronize_session=False)
    )


def backoff_seconds(attempts: int, *, base: float, cap: float) -> float:
    """Exponential backoff with full jitter: spreads retries so a recovering relay is not stampeded."""
    ceiling = min(cap, base * (2 ** min(30, max(0, attempts - 1))))
    return random.uniform(ceiling / 2, ceiling)


async def mark_retry(
    session: AsyncSession,
    *,
    worker_id: str,
    delivery_id: int,
    reply: str,
    retry_at: datetime,
    count_attempt: bool = True,
) -> None:
    await session.execute(
        sa.update(Delivery)
        .where(_held_by(worker_id, [delivery_id]))
        .values(
            status=DeliveryStatus.queued,
            lease_until=None,
            leased_by=None,
            attempts=Delivery.attempts + (1 if count_attempt else 0),
            next_attempt_at=retry_at,
            last_error=reply[:2000],
        )
        .execution_options(synchronize_session=False)
    )


async def release(
    session: AsyncSession,
    *,
    worker_id: str,
    ids: Sequence[int],
    retry_at: datetime | None = None,
    reason: str | None = None,
) -> None:
    """Give unsent claimed rows back to the queue (shutdown, pause, relay down): no attempt is
    counted, since the message never reached a recipient's server."""
    if not ids:
        return
    values: dict[str, object] = {
        "status": DeliveryStatus.queued,
        "lease_until": None,
        "leased_by": None,
    }
    if retry_at is not None:
        values["next_attempt_at"] = retry_at
    if reason is not None:
        values["last_error"] = reason[:2000]
    await session.execute(
        sa.update(Delivery)
        .where(_held_by(worker_id, ids))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    # Rows of a digest cancelled while they were in hand will never be sent: say so.
    cancelled = select(Digest.id).where(Digest.status == DigestStatus.cancelled)
    await session.execute(
        sa.update(Delivery)
        .where(
            col(Delivery.id).in_(ids),
            col(Delivery.status) == DeliveryStatus.queued,
            col(Delivery.digest_id).in_(cancelled),
        )
        .values(status=DeliveryStatus.skipped, last_error="digest cancelled")
        .execution_options(synchronize_session=False)
    )


async def renew_leases(session: AsyncSession, *, worker_id: str, lease_seconds: int) -> None:
    """Extend every lease this worker holds: rows still being sent are never taken over."""
    await session.execute(
        sa.update(Delivery)
        .where(col(Delivery.leased_by) == worker_id, col(Delivery.status) == DeliveryStatus.sending)
        .values(lease_until=utcnow() + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )


async def no_longer_held(session: AsyncSession, *, worker_id: str, ids: Sequence[int]) -> set[int]:
    """Of these claimed rows, those this worker must not send any more: skipped meanwhile
    (unsubscribe, bounce, erasure, cancel) or taken over after an expired lease."""
    if not ids:
        return set()
    rows = await session.exec(
        select(Delivery.id).where(
            col(Delivery.id).in_(ids),
            or_(
                col(Delivery.status) != DeliveryStatus.sending, col(Delivery.leased_by) != worker_id
            ),
        )
    )
    return {i for i in rows.all() if i is not None}


async def skip_subscriber_deliveries(
    session: AsyncSession, *, subscriber_id: int, why: str
) -> None:
    """Nothing more goes out to this subscriber (unsubscribe, bounce, erasure): queued rows, and
    rows a worker holds, which it checks twice a second and drops; only a message already on
    the wire can still leave."""
    await session.execute(
        sa.update(Delivery)
        .where(
            col(Delivery.subscriber_id) == subscriber_id,
            col(Delivery.status).in_([DeliveryStatus.queued, DeliveryStatus.sending]),
        )
        .values(status=DeliveryStatus.skipped, last_error=why[:2000], lease_until=None)
        .execution_options(synchronize_session=False)
    )
