"""Bounces and complaints: one rule for the webhook, the editor API and returned mail.

hard -> `bounced`; complaint -> `complained`; soft -> counted, the third within 30 days ->
`bounced`. A subscriber who becomes bounced or complained is mailed nothing more, including
deliveries already queued.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app import metrics
from app.bounces.reports import Report, UnreadableReport, parse_report
from app.config import Settings
from app.mail.verp import verp_delivery_id
from app.models import (
    BounceEvent,
    BounceType,
    Delivery,
    Subscriber,
    SubscriberEvent,
    SubscriberStatus,
    utcnow,
)
from app.security import Tokens
from app.subscriptions.service import subscriber_by_email
from app.worker import outbox

SOFT_BOUNCE_LIMIT = 3
SOFT_BOUNCE_WINDOW = timedelta(days=30)
_OUR_MESSAGE_ID = re.compile(r"<nl\.(\d{1,18})\.([0-9a-f]{10})@[^>]+>")


class BounceSource:
    api = "api"  # an editor's key
    webhook = "webhook"  # a provider's webhook (BOUNCE_WEBHOOK_SECRET)
    mailbox = "mailbox"  # `newsletter bounces process`


@dataclass(frozen=True, slots=True)
class BounceOutcome:
    subscriber_id: int
    status: str
    changed: bool  # the status changed because of this event


async def apply_bounce(
    session: AsyncSession,
    *,
    subscriber: Subscriber,
    type: BounceType,
    reason: str | None,
    source: str,
    report_id: str | None = None,
) -> BounceOutcome | None:
    """Record one bounce or complaint for a known subscriber and apply its effect.

    With a `report_id` (returned mail), None if that report was already applied: nothing is
    recorded or changed again."""
    assert subscriber.id is not None
    now = utcnow()
    reason = " ".join(reason.split())[:2000] if reason else None
    event = BounceEvent(
        subscriber_id=subscriber.id,
        type=type,
        reason=reason,
        source=source,
        report_id=report_id,
        created_at=now,
    )
    if report_id is None:
        session.add(event)
    else:
        try:
            # A savepoint: the unique report_id refuses a report seen before (by an earlier
            # run, a concurrent one, or a copy of it earlier in the same mailbox).
            async with session.begin_nested():
                session.add(event)
                await session.flush()
        except IntegrityError:
            return None
    session.add(
        SubscriberEvent(
            subscriber_id=subscriber.id,
            event=f"{type}_bounce" if type != BounceType.complaint else "complaint",
            detail=f"{source}: {reason}"[:1000] if reason else source,
            created_at=now,
        )
    )
    await session.flush()
    metrics.count_bounce(str(type))

    new_status: SubscriberStatus | None = None
    why = str(type)
    if type == BounceType.complaint:
        if subscriber.status != SubscriberStatus.complained:
            new_status = SubscriberStatus.complained
    elif subscriber.status not in (SubscriberStatus.bounced, SubscriberStatus.complained):
        if type == BounceType.hard:
            new_status = SubscriberStatus.bounced
        else:
            recent_soft = (
                await session.exec(
                    select(func.count()).where(
                        BounceEvent.subscriber_id == subscriber.id,
                        BounceEvent.type == BounceType.soft,
                        col(BounceEvent.created_at) >= now - SOFT_BOUNCE_WINDOW,
                    )
                )
            ).one()
            if recent_soft >= SOFT_BOUNCE_LIMIT:
                new_status = SubscriberStatus.bounced
                why = f"{recent_soft} soft bounces within {SOFT_BOUNCE_WINDOW.days} days"

    if new_status is None:
        return BounceOutcome(subscriber.id, subscriber.status, changed=False)
    previous = subscriber.status
    subscriber.status = new_status
    subscriber.updated_at = now
    if new_status == SubscriberStatus.bounced:
        subscriber.bounced_at = now
    session.add(subscriber)
    session.add(
        SubscriberEvent(
            subscriber_id=subscriber.id,
            event=str(new_status),
            detail=f"{why} (was {previous})",
            created_at=now,
        )
    )
    await outbox.skip_subscriber_deliveries(
        session, subscriber_id=subscriber.id, why=str(new_status)
    )
    await session.flush()
    return BounceOutcome(subscriber.id, new_status, changed=True)


async def report_bounce(
    session: AsyncSession,
    *,
    tokens: Tokens,
    email: str,
    type: BounceType,
    reason: str | None,
    source: str,
) -> BounceOutcome | None:
    """A bounce reported by address (API, webhook). Unknown addresses: None, nothing stored."""
    # An erased subscriber is already suppressed; storing a fresh reason would store personal
    # data again, so they are treated like an unknown address.
    subscriber = await subscriber_by_email(
        session, tokens=tokens, email=email, include_erased=False
    )
    if subscriber is None:
        return None
    outcome = await apply_bounce(
        session, subscriber=subscriber, type=type, reason=reason, source=source
    )
    assert outcome is not None  # only a report_id can make it None
    return outcome


async def _subscriber_of_delivery(session: AsyncSession, delivery_id: int) -> Subscriber | None:
    delivery = await session.get(Delivery, delivery_id)
    if delivery is None or delivery.subscriber_id is None:
        return None
    subscriber = await session.get(Subscriber, delivery.subscriber_id)
    if subscriber is None or subscriber.erased_at is not None:
        return None
    return subscriber


async def match_report(
    session: AsyncSession, *, settings: Settings, tokens: Tokens, report: Report
) -> Subscriber | None:
    """The subscriber a report is about: VERP address, then the original Message-ID, then the
    recipient addresses it names."""
    if settings.verp:
        for address in report.envelope_addresses:
            delivery_id = verp_delivery_id(settings, address)
            if delivery_id is not None:
                subscriber = await _subscriber_of_delivery(session, delivery_id)
                if subscriber is not None:
                    return subscriber
    for message_id in report.message_ids:
        delivery = (
            await session.exec(select(Delivery).where(Delivery.message_id == message_id))
        ).first()
        if delivery is not None and delivery.id is not None:
            subscriber = await _subscriber_of_delivery(session, delivery.id)
            if subscriber is not None:
                return subscriber
        # Our Message-IDs name their delivery and carry a keyed tag: trust the id if the tag
        # matches, even if the outcome was never recorded (a crash between send and record).
        shape = _OUR_MESSAGE_ID.fullmatch(message_id)
        if shape and tokens.is_our_message_id_tag(int(shape.group(1)), shape.group(2)):
            subscriber = await _subscriber_of_delivery(session, int(shape.group(1)))
            if subscriber is not None:
                return subscriber
    for address in report.recipients:
        subscriber = await subscriber_by_email(
            session, tokens=tokens, email=address, include_erased=False
        )
        if subscriber is not None:
            return subscriber
    return None


@dataclass(slots=True)
class ProcessSummary:
    processed: int = 0
    hard: int = 0
    soft: int = 0
    complaints: int = 0
    unmatched: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)
    already_processed: int = 0  # reports applied by an earlier run (or twice in this one)
    suppressed: int = 0  # subscribers whose status changed


async def process_returned_mail(
    session: AsyncSession,
    *,
    settings: Settings,
    tokens: Tokens,
    messages: Iterable[tuple[str, bytes]],
) -> ProcessSummary:
    """Apply every readable report in (name, raw message) pairs, each at most once ever (by its
    `report_id`); list the rest."""
    summary = ProcessSummary()
    for name, raw in messages:
        summary.processed += 1
        try:
            report = parse_report(raw)
        except UnreadableReport as exc:
            summary.unreadable.append((name, str(exc)))
            continue
        subscriber = await match_report(session, settings=settings, tokens=tokens, report=report)
        if subscriber is None:
            summary.unmatched.append(name)
            continue
        outcome = await apply_bounce(
            session,
            subscriber=subscriber,
            type=report.type,
            reason=report.reason,
            source=BounceSource.mailbox,
            report_id=report.report_id,
        )
        if outcome is None:
            summary.already_processed += 1
            continue
        summary.suppressed += outcome.changed
        if report.type == BounceType.hard:
            summary.hard += 1
        elif report.type == BounceType.soft:
            summary.soft += 1
        else:
            summary.complaints += 1
    return summary
