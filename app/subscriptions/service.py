"""Signup (double opt-in), confirmation, unsubscribe and resubscribe."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app import metrics
from app.addresses import address_key
from app.config import Settings
from app.models import (
    ConsentSource,
    Delivery,
    DeliveryKind,
    Subscriber,
    SubscriberEventType,
    SubscriberStatus,
    as_utc,
    utcnow,
)
from app.outbox import queue as outbox
from app.security import TokenError, Tokens
from app.subscribers.lifecycle import change_status, record_event
from app.subscribers.service import subscriber_by_hash


@dataclass(frozen=True, slots=True)
class Consent:
    ip: str | None
    user_agent: str | None
    source: ConsentSource
    language: str


def _insert_subscriber(session: AsyncSession) -> Any:
    table = SQLModel.metadata.tables["subscriber"]
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=["email_hash"])
    return sqlite.insert(table).on_conflict_do_nothing(index_elements=["email_hash"])


async def _confirmation_allowed(
    session: AsyncSession, *, settings: Settings, subscriber_id: int
) -> bool:
    # A pending address gets at most one confirmation per interval and a few per day, so repeated
    # posts of someone else's address cannot be used to flood that inbox.
    now = utcnow()
    day_ago = now - timedelta(days=1)
    recent = select(Delivery.created_at).where(
        Delivery.subscriber_id == subscriber_id,
        Delivery.kind == DeliveryKind.confirmation,
        col(Delivery.created_at) >= day_ago,
    )
    rows = (await session.exec(recent)).all()
    if len(rows) >= settings.confirmation_max_per_day:
        return False
    interval = timedelta(minutes=settings.confirmation_min_interval_minutes)
    return all(as_utc(created) < now - interval for created in rows)


async def signup(
    session: AsyncSession,
    *,
    settings: Settings,
    tokens: Tokens,
    email: str,
    name: str | None,
    consent: Consent,
    cadence: str | None = None,
    topics: list[str] | None = None,
) -> Subscriber:
    """Start (or restart) double opt-in for `email` (normalised: app.addresses). The caller
    answers the same whatever happens here. `cadence` None: DEFAULT_CADENCE; `topics` (checked
    against TOPICS by the caller) None: every article."""
    metrics.count_signup(consent.source)
    email_hash = tokens.email_hash(address_key(email))
    now = utcnow()
    subscriber = await subscriber_by_hash(session, email_hash)
    new = False
    if subscriber is None:
        # INSERT ... ON CONFLICT DO NOTHING: of two simultaneous sign-ups of one address, one
        # inserts and the other finds its row, without an error. (No savepoint: on SQLite a
        # savepoint's RELEASE would commit the request's transaction before it is done.)
        inserted = await session.execute(
            _insert_subscriber(session)
            .values(
                email=email,
                email_hash=email_hash,
                name=name,
                language=consent.language,
                cadence=cadence or settings.default_cadence,
                topics=list(topics or []),
                status=SubscriberStatus.pending,
                created_at=now,
                updated_at=now,
            )
            .returning(SQLModel.metadata.tables["subscriber"].c.id)
        )
        new = inserted.scalar_one_or_none() is not None
        subscriber = await subscriber_by_hash(session, email_hash)
        assert subscriber is not None  # ours, or the row that won the race

    assert subscriber.id is not None
    if subscriber.status == SubscriberStatus.confirmed:
        return subscriber  # already on the list: nothing to send, nothing to reveal

    if not new and subscriber.status != SubscriberStatus.pending:
        # Unsubscribed, bounced, complained or erased: only a fresh double opt-in brings them back.
        await change_status(
            session,
            subscriber,
            to=SubscriberStatus.pending,
            event=SubscriberEventType.resignup,
            detail=f"from {subscriber.status}",
            now=now,
        )
    subscriber.email = email
    subscriber.name = name if name is not None else subscriber.name
    subscriber.language = consent.language
    if cadence is not None:
        subscriber.cadence = cadence
    if topics is not None:
        subscriber.topics = list(topics)
    subscriber.erased_at = None
    subscriber.consent_at = now
    subscriber.consent_ip = consent.ip
    subscriber.consent_user_agent = (consent.user_agent or "")[:512] or None
    subscriber.consent_source = consent.source
    subscriber.updated_at = now
    session.add(subscriber)
    if new:
        record_event(session, subscriber, SubscriberEventType.signup, consent.source, now=now)

    if await _confirmation_allowed(session, settings=settings, subscriber_id=subscriber.id):
        outbox.enqueue(
            session,
            kind=DeliveryKind.confirmation,
            subscriber_id=subscriber.id,
            language=consent.language,
        )
    await session.flush()
    return subscriber


async def _subscriber_for(session: AsyncSession, subscriber_id: int, tag: str) -> Subscriber:
    subscriber = await session.get(Subscriber, subscriber_id)
    if subscriber is None or subscriber.email_hash[:16] != tag:
        raise TokenError("the link is not valid")
    return subscriber


async def subscriber_for_confirm(
    session: AsyncSession, *, tokens: Tokens, token: str
) -> Subscriber:
    """The pending or confirmed reader a confirmation link names; changes nothing."""
    subscriber_id, tag = tokens.read_confirm_token(token)
    subscriber = await _subscriber_for(session, subscriber_id, tag)
    if subscriber.status not in (SubscriberStatus.pending, SubscriberStatus.confirmed):
        raise TokenError("this link is no longer valid")
    return subscriber


async def confirm(session: AsyncSession, *, tokens: Tokens, token: str) -> Subscriber:
    subscriber = await subscriber_for_confirm(session, tokens=tokens, token=token)
    if subscriber.status == SubscriberStatus.confirmed:
        return subscriber  # a second click shows the same success
    await change_status(
        session, subscriber, to=SubscriberStatus.confirmed, event=SubscriberEventType.confirmed
    )
    return subscriber


async def subscriber_for_unsubscribe(
    session: AsyncSession, *, tokens: Tokens, token: str
) -> Subscriber:
    subscriber_id, tag = tokens.read_unsubscribe_token(token)
    return await _subscriber_for(session, subscriber_id, tag)


async def unsubscribe(
    session: AsyncSession, *, tokens: Tokens, token: str, how: str = "link"
) -> Subscriber:
    """Idempotent; also for erased, bounced or complained subscribers (they stay suppressed)."""
    subscriber = await subscriber_for_unsubscribe(session, tokens=tokens, token=token)
    assert subscriber.id is not None
    if subscriber.status in (SubscriberStatus.pending, SubscriberStatus.confirmed):
        # From this moment nothing more goes out, including what is queued or in a worker's hands.
        await change_status(
            session,
            subscriber,
            to=SubscriberStatus.unsubscribed,
            event=SubscriberEventType.unsubscribed,
            detail=how,
        )
    return subscriber


async def subscriber_for_preferences(
    session: AsyncSession, *, tokens: Tokens, token: str
) -> Subscriber:
    """The reader a preferences link names (any status but erased); changes nothing."""
    subscriber_id, tag = tokens.read_preferences_token(token)
    subscriber = await _subscriber_for(session, subscriber_id, tag)
    if subscriber.erased_at is not None or subscriber.email is None:
        raise TokenError("this link is no longer valid")
    return subscriber


async def update_preferences(
    session: AsyncSession,
    *,
    tokens: Tokens,
    token: str,
    cadence: str,
    topics: list[str],
    name: str | None,
    language: str,
) -> Subscriber:
    """Cadence, topics (checked against TOPICS by the caller), name and language. The status
    does not change here: unsubscribing is its own link."""
    subscriber = await subscriber_for_preferences(session, tokens=tokens, token=token)
    subscriber.cadence = cadence
    subscriber.topics = list(topics)
    subscriber.name = name
    subscriber.language = language
    subscriber.updated_at = utcnow()
    session.add(subscriber)
    await session.flush()
    return subscriber


async def resubscribe(session: AsyncSession, *, tokens: Tokens, token: str) -> Subscriber:
    """Undo an unsubscribe: the token came by email, so it proves the mailbox."""
    subscriber = await subscriber_for_unsubscribe(session, tokens=tokens, token=token)
    assert subscriber.id is not None
    if subscriber.status == SubscriberStatus.unsubscribed and subscriber.erased_at is None:
        await change_status(
            session,
            subscriber,
            to=SubscriberStatus.confirmed,
            event=SubscriberEventType.resubscribed,
        )
    return subscriber
