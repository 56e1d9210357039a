"""Subscriber data for editors: list and search, everything held on one person (GDPR access),
and erasure (GDPR erasure) that keeps only the keyed address hash so suppression still holds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.models import (
    BounceEvent,
    Delivery,
    Subscriber,
    SubscriberEvent,
    SubscriberStatus,
    utcnow,
)
from app.security import Tokens
from app.subscriptions.service import subscriber_by_email
from app.worker import outbox

# Events whose detail may quote the address or a provider's reply naming it.
_EVENTS_WITH_FREE_TEXT = ("hard_bounce", "soft_bounce", "complaint", "bounced", "complained")


@dataclass(frozen=True, slots=True)
class SubscriberPage:
    total: int
    items: Sequence[Subscriber]


@dataclass(frozen=True, slots=True)
class SubscriberRecord:
    subscriber: Subscriber
    events: Sequence[SubscriberEvent]
    deliveries: Sequence[Delivery]
    bounces: Sequence[BounceEvent]


async def list_subscribers(
    session: AsyncSession,
    *,
    status: SubscriberStatus | None = None,
    q: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> SubscriberPage:
    """Newest first; erased subscribers (no personal data left) are not listed."""
    where: list[sa.ColumnElement[bool]] = [col(Subscriber.erased_at).is_(None)]
    if status is not None:
        where.append(col(Subscriber.status) == status)
    if q:
        # LIKE wildcards typed by the editor are matched literally.
        escaped = q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = f"%{escaped}%"
        where.append(
            sa.or_(
                func.lower(col(Subscriber.email)).like(pattern, escape="\\"),
                func.lower(col(Subscriber.name)).like(pattern, escape="\\"),
            )
        )
    total = (await session.exec(select(func.count()).select_from(Subscriber).where(*where))).one()
    items = (
        await session.exec(
            select(Subscriber)
            .where(*where)
            .order_by(col(Subscriber.created_at).desc(), col(Subscriber.id).desc())
            .limit(limit)
            .offset(offset)
        )
    ).all()
    return SubscriberPage(total=total, items=items)


async def subscriber_record(
    session: AsyncSession, *, tokens: Tokens, email: str
) -> SubscriberRecord | None:
    """Everything held on one person: profile, consent, status history, deliveries, bounces."""
    subscriber = await subscriber_by_email(session, tokens=tokens, email=email, include_erased=True)
    if subscriber is None:
        return None
    events = (
        await session.exec(
            select(SubscriberEvent)
            .where(SubscriberEvent.subscriber_id == subscriber.id)
            .order_by(col(SubscriberEvent.created_at), col(SubscriberEvent.id))
        )
    ).all()
    deliveries = (
        await session.exec(
            select(Delivery)
            .where(Delivery.subscriber_id == subscriber.id)
            .order_by(col(Delivery.created_at), col(Delivery.id))
        )
    ).all()
    bounces = (
        await session.exec(
            select(BounceEvent)
            .where(BounceEvent.subscriber_id == subscriber.id)
            .order_by(col(BounceEvent.created_at), col(BounceEvent.id))
        )
    ).all()
    return SubscriberRecord(subscriber, events, deliveries, bounces)


async def erase_subscriber(
    session: AsyncSession, *, tokens: Tokens, email: str
) -> Subscriber | None:
    """Erase the personal data; keep the row and its keyed hash so the address stays suppressed
    (and an old unsubscribe link still works). Idempotent; None if the address is unknown."""
    subscriber = await subscriber_by_email(session, tokens=tokens, email=email, include_erased=True)
    if subscriber is None:
        return None
    assert subscriber.id is not None
    if subscriber.erased_at is not None:
        return subscriber
    now = utcnow()
    previous = subscriber.status
    subscriber.email = None
    subscriber.name = None
    subscriber.consent_ip = None
    subscriber.consent_user_agent = None
    subscriber.erased_at = now
    subscriber.updated_at = now
    if subscriber.status not in (SubscriberStatus.bounced, SubscriberStatus.complained):
        subscriber.status = SubscriberStatus.unsubscribed
        subscriber.unsubscribed_at = subscriber.unsubscribed_at or now
    session.add(subscriber)
    # Provider replies ("550 <someone@example.org>: user unknown") can name the address.
    await session.execute(
        sa.update(SubscriberEvent)
        .where(
            col(SubscriberEvent.subscriber_id) == subscriber.id,
            col(SubscriberEvent.event).in_(_EVENTS_WITH_FREE_TEXT),
        )
        .values(detail=None)
        .execution_options(synchronize_session=False)
    )
    await session.execute(
        sa.update(BounceEvent)
        .where(col(BounceEvent.subscriber_id) == subscriber.id)
        .values(reason=None)
        .execution_options(synchronize_session=False)
    )
    await session.execute(
        sa.update(Delivery)
        .where(col(Delivery.subscriber_id) == subscriber.id)
        .values(to_address=None, last_error=None)
        .execution_options(synchronize_session=False)
    )
    await outbox.skip_subscriber_deliveries(session, subscriber_id=subscriber.id, why="erased")
    session.add(
        SubscriberEvent(subscriber_id=subscriber.id, event="erased", detail=f"was {previous}")
    )
    await session.flush()
    return subscriber
