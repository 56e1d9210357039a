"""Subscriber data for editors: list and search, everything held on one person (GDPR access),
and erasure (GDPR erasure) that keeps only the keyed address hash so suppression still holds."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.addresses import InvalidEmail, address_key, normalize_email
from app.models import (
    BounceEvent,
    Delivery,
    Subscriber,
    SubscriberEvent,
    SubscriberEventType,
    SubscriberStatus,
    utcnow,
)
from app.outbox import queue as outbox
from app.security import Tokens
from app.subscribers.lifecycle import change_status, record_event

# Events whose detail may quote the address or a provider's reply naming it.
_EVENTS_WITH_FREE_TEXT = (
    SubscriberEventType.hard_bounce,
    SubscriberEventType.soft_bounce,
    SubscriberEventType.complaint,
    SubscriberEventType.bounced,
    SubscriberEventType.complained,
)


@dataclass(frozen=True, slots=True)
class Recipient:
    """What composing an email needs to know of its reader."""

    id: int
    email: str | None
    name: str | None
    language: str
    status: str
    email_hash: str
    topics: tuple[str, ...] = ()  # empty: every article


async def subscriber_by_hash(session: AsyncSession, email_hash: str) -> Subscriber | None:
    return (
        await session.exec(select(Subscriber).where(Subscriber.email_hash == email_hash))
    ).first()


async def subscriber_by_email(
    session: AsyncSession, *, tokens: Tokens, email: str, include_erased: bool
) -> Subscriber | None:
    """The subscriber with this address (as typed, any case: it is normalised here), found
    through the keyed hash, so an erased subscriber is found too when `include_erased`. None for
    an unknown or invalid address."""
    try:
        normalized = normalize_email(email)
    except InvalidEmail:
        return None
    subscriber = await subscriber_by_hash(session, tokens.email_hash(address_key(normalized)))
    if subscriber is not None and subscriber.erased_at is not None and not include_erased:
        return None
    return subscriber


async def recipients_by_id(
    session: AsyncSession, *, ids: Iterable[int | None]
) -> dict[int, Recipient]:
    """The readers of a batch of deliveries, in one query."""
    wanted = {i for i in ids if i is not None}
    if not wanted:
        return {}
    rows = (
        await session.execute(
            sa.select(
                col(Subscriber.id),
                col(Subscriber.email),
                col(Subscriber.name),
                col(Subscriber.language),
                col(Subscriber.status),
                col(Subscriber.email_hash),
                col(Subscriber.topics),
            ).where(col(Subscriber.id).in_(wanted))
        )
    ).all()
    return {
        row[0]: Recipient(
            id=row[0],
            email=row[1],
            name=row[2],
            language=row[3],
            status=row[4],
            email_hash=row[5],
            topics=tuple(row[6] or ()),
        )
        for row in rows
    }


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
    subscriber.topics = []  # what a reader reads about is personal too
    subscriber.consent_ip = None
    subscriber.consent_user_agent = None
    subscriber.erased_at = now
    subscriber.updated_at = now
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
    # TRACK_CLICKS=per_reader: what they read goes with them (the counters stay, anonymous).
    await session.execute(
        sa.delete(SubscriberEvent)
        .where(
            col(SubscriberEvent.subscriber_id) == subscriber.id,
            col(SubscriberEvent.event) == SubscriberEventType.clicked,
        )
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
    detail = f"was {previous}"
    if subscriber.status in (SubscriberStatus.pending, SubscriberStatus.confirmed):
        await change_status(
            session,
            subscriber,
            to=SubscriberStatus.unsubscribed,
            event=SubscriberEventType.erased,
            detail=detail,
            now=now,
        )
    else:  # already off the list (unsubscribed, bounced, complained): the status stays
        record_event(session, subscriber, SubscriberEventType.erased, detail, now=now)
        await outbox.skip_subscriber_deliveries(session, subscriber_id=subscriber.id, why="erased")
    await session.flush()
    return subscriber
