"""Bounces and complaints: one rule for the webhook, the editor API and returned mail.

hard -> `bounced`; complaint -> `complained`; soft -> counted: on SOFT_BOUNCE_LIMIT (3) digests
in a row with no delivery between -> `bounced` (soft bounces tied to no digest: SOFT_BOUNCE_LIMIT
within 30 days). A subscriber
who becomes bounced or complained is mailed nothing more, including deliveries already queued.

Each bounce or complaint is tied to the digest it is about (the copy a report names, else the
reader's latest copy); complaints add to that send's counters, and the complaint breaker
(app.outbox.breakers) is checked once they are recorded.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app import metrics
from app.bounces.reports import Report, UnreadableReport, parse_report
from app.config import Settings
from app.models import (
    BounceEvent,
    BounceType,
    Delivery,
    DeliveryKind,
    DeliveryStatus,
    Digest,
    DigestStatus,
    Subscriber,
    SubscriberEventType,
    SubscriberStatus,
    as_utc,
    utcnow,
)
from app.outbox import breakers, tally
from app.outbox.identity import delivery_of_message_id, verp_delivery_id
from app.outbox.kinds import Kinds
from app.security import Tokens
from app.subscribers.lifecycle import change_status, record_event
from app.subscribers.service import subscriber_by_email

SOFT_BOUNCE_LIMIT = 3
SOFT_BOUNCE_WINDOW = timedelta(days=30)
_EVENT_OF = {
    BounceType.hard: SubscriberEventType.hard_bounce,
    BounceType.soft: SubscriberEventType.soft_bounce,
    BounceType.complaint: SubscriberEventType.complaint,
}


class BounceSource:
    api = "api"  # an editor's key
    webhook = "webhook"  # a provider's webhook (BOUNCE_WEBHOOK_SECRET)
    mailbox = "mailbox"  # `newsletter bounces process`


@dataclass(frozen=True, slots=True)
class BounceOutcome:
    subscriber_id: int
    status: str
    changed: bool  # the status changed because of this event
    digest_id: int | None = None  # the send it was tied to


async def _soft_bounced_in_a_row(
    session: AsyncSession, *, subscriber_id: int, digest_id: int, limit: int
) -> bool:
    """Whether the reader's last `limit` digest copies (up to `digest_id`) all soft-bounced:
    a copy that went out with no soft bounce since is a delivery, and breaks the run."""
    copies = (
        await session.exec(
            select(Delivery.digest_id)
            .where(
                Delivery.subscriber_id == subscriber_id,
                Delivery.kind == DeliveryKind.digest,
                col(Delivery.digest_id) <= digest_id,
                col(Delivery.status).in_([DeliveryStatus.sent, DeliveryStatus.failed]),
            )
            .order_by(col(Delivery.digest_id).desc())
            .limit(limit)
        )
    ).all()
    if len(copies) < limit:
        return False
    soft = set(
        (
            await session.exec(
                select(BounceEvent.digest_id).where(
                    BounceEvent.subscriber_id == subscriber_id,
                    BounceEvent.type == BounceType.soft,
                    col(BounceEvent.digest_id).in_(list(copies)),
                )
            )
        ).all()
    )
    return all(c in soft for c in copies)


async def apply_bounce(
    session: AsyncSession,
    *,
    subscriber: Subscriber,
    type: BounceType,
    reason: str | None,
    source: str,
    report_id: str | None = None,
    digest_id: int | None = None,
    soft_bounce_limit: int = SOFT_BOUNCE_LIMIT,
) -> BounceOutcome | None:
    """Record one bounce or complaint for a known subscriber and apply its effect.

    `digest_id`: the digest it is about, if known; else the reader's latest copy. With a
    `report_id` (returned mail), None if that report was already applied: nothing is recorded or
    changed again."""
    assert subscriber.id is not None
    now = utcnow()
    if digest_id is None:
        latest = await tally.latest_send_of(
            session, subscriber_id=subscriber.id, kinds=[DeliveryKind.digest.value]
        )
        digest_id = latest[1] if latest is not None else None
    reason = " ".join(reason.split())[:2000] if reason else None
    event = BounceEvent(
        subscriber_id=subscriber.id,
        type=type,
        reason=reason,
        source=source,
        report_id=report_id,
        digest_id=digest_id,
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
    record_event(
        session, subscriber, _EVENT_OF[type], f"{source}: {reason}" if reason else source, now=now
    )
    await session.flush()
    metrics.count_bounce(str(type))
    if type == BounceType.complaint and digest_id is not None:
        await tally.add(
            session,
            {
                (DeliveryKind.digest.value, digest_id, tally.domain_of(subscriber.email)): {
                    "complaints": 1
                }
            },
        )

    new_status: SubscriberStatus | None = None
    why = str(type)
    if type == BounceType.complaint:
        if subscriber.status != SubscriberStatus.complained:
            new_status = SubscriberStatus.complained
    elif subscriber.status not in (SubscriberStatus.bounced, SubscriberStatus.complained):
        if type == BounceType.hard:
            new_status = SubscriberStatus.bounced
        elif digest_id is not None:
            # A soft bounce on a digest: suppressed after SOFT_BOUNCE_LIMIT digests in a row
            # with no delivery between (a reader whose box was full once a month stays).
            if await _soft_bounced_in_a_row(
                session, subscriber_id=subscriber.id, digest_id=digest_id, limit=soft_bounce_limit
            ):
                new_status = SubscriberStatus.bounced
                why = (
                    f"soft bounces on {soft_bounce_limit} digests in a row with no delivery "
                    f"between (SOFT_BOUNCE_LIMIT), the last on digest {digest_id}"
                )
        else:
            # Tied to no digest (the reader never got one): SOFT_BOUNCE_LIMIT within 30 days.
            recent_soft = (
                await session.exec(
                    select(func.count()).where(
                        BounceEvent.subscriber_id == subscriber.id,
                        BounceEvent.type == BounceType.soft,
                        col(BounceEvent.created_at) >= now - SOFT_BOUNCE_WINDOW,
                    )
                )
            ).one()
            if recent_soft >= soft_bounce_limit:
                new_status = SubscriberStatus.bounced
                why = f"{recent_soft} soft bounces within {SOFT_BOUNCE_WINDOW.days} days"

    if new_status is None:
        return BounceOutcome(subscriber.id, subscriber.status, changed=False, digest_id=digest_id)
    previous = subscriber.status
    await change_status(
        session,
        subscriber,
        to=new_status,
        event=(
            SubscriberEventType.bounced
            if new_status == SubscriberStatus.bounced
            else SubscriberEventType.complained
        ),
        detail=f"{why} (was {previous})",
        now=now,
    )
    return BounceOutcome(subscriber.id, new_status, changed=True, digest_id=digest_id)


async def bounce_at_send(
    session: AsyncSession, *, subscriber_id: int | None, reply: str, digest_id: int | None = None
) -> None:
    """A 5xx on the recipient at send time is a hard bounce, recorded like any other."""
    if subscriber_id is None:
        return
    subscriber = await session.get(Subscriber, subscriber_id)
    if subscriber is not None:
        await apply_bounce(
            session,
            subscriber=subscriber,
            type=BounceType.hard,
            reason=reply,
            source="smtp",
            digest_id=digest_id,
        )


async def soft_bounce_at_send(
    session: AsyncSession,
    *,
    subscriber_id: int | None,
    digest_id: int | None,
    reply: str,
    soft_bounce_limit: int = SOFT_BOUNCE_LIMIT,
) -> None:
    """A copy the relay refused for a while (4xx) until its last attempt: a soft bounce on its
    digest."""
    if subscriber_id is None or digest_id is None:
        return
    subscriber = await session.get(Subscriber, subscriber_id)
    if subscriber is not None and subscriber.erased_at is None:
        await apply_bounce(
            session,
            subscriber=subscriber,
            type=BounceType.soft,
            reason=reply,
            source="smtp",
            digest_id=digest_id,
            soft_bounce_limit=soft_bounce_limit,
        )


async def check_breakers(
    session: AsyncSession, *, settings: Settings, kinds: Kinds, digest_ids: Iterable[int | None]
) -> list[tuple[str, int, str]]:
    """After complaints are recorded: pause the digests whose complaint rate trips the breaker
    (through the digest kind, the path of every pause)."""
    sends = {(DeliveryKind.digest.value, i) for i in digest_ids if i is not None}
    if not sends:
        return []
    return await breakers.check(session, settings=settings, kinds=kinds, sends=sends)


async def report_bounce(
    session: AsyncSession,
    *,
    tokens: Tokens,
    email: str,
    type: BounceType,
    reason: str | None,
    source: str,
    settings: Settings | None = None,
    kinds: Kinds | None = None,
) -> BounceOutcome | None:
    """A bounce reported by address (API, webhook), tied to the reader's latest copy. Unknown
    addresses: None, nothing stored. With `kinds`, a complaint checks the complaint breaker."""
    # An erased subscriber is already suppressed; storing a fresh reason would store personal
    # data again, so they are treated like an unknown address.
    subscriber = await subscriber_by_email(
        session, tokens=tokens, email=email, include_erased=False
    )
    if subscriber is None:
        return None
    outcome = await apply_bounce(
        session,
        subscriber=subscriber,
        type=type,
        reason=reason,
        source=source,
        soft_bounce_limit=settings.soft_bounce_limit if settings else SOFT_BOUNCE_LIMIT,
    )
    assert outcome is not None  # only a report_id can make it None
    if type == BounceType.complaint and settings is not None and kinds is not None:
        await check_breakers(
            session, settings=settings, kinds=kinds, digest_ids=[outcome.digest_id]
        )
    return outcome


@dataclass(frozen=True, slots=True)
class Match:
    subscriber: Subscriber
    how: str  # MatchedBy
    digest_id: int | None = None  # the digest of the copy the report is about, when known


async def _match_delivery(session: AsyncSession, delivery_id: int, how: str) -> Match | None:
    """The reader of one of our copies, and its digest: the report is about that one."""
    delivery = await session.get(Delivery, delivery_id)
    if delivery is None or delivery.subscriber_id is None:
        return None
    subscriber = await session.get(Subscriber, delivery.subscriber_id)
    if subscriber is None or subscriber.erased_at is not None:
        return None
    digest_id = delivery.digest_id if delivery.kind == DeliveryKind.digest else None
    return Match(subscriber, how, digest_id)


class MatchedBy:
    verp = "verp"  # the signed VERP address the report came back to
    message_id = "message_id"  # the original message's Message-ID, ours (keyed tag)
    address = "address"  # only a recipient address the report names: anyone could write that


async def match_report(
    session: AsyncSession, *, settings: Settings, tokens: Tokens, report: Report
) -> Match | None:
    """The subscriber a report is about, how it was matched (signed VERP address, then the
    original Message-ID, then the recipient addresses it names) and, through the first two,
    the digest of the copy that came back."""
    if settings.verp:
        for address in report.envelope_addresses:
            delivery_id = verp_delivery_id(settings, tokens, address)
            if delivery_id is not None:
                match = await _match_delivery(session, delivery_id, MatchedBy.verp)
                if match is not None:
                    return match
    for message_id in report.message_ids:
        delivery = (
            await session.exec(select(Delivery).where(Delivery.message_id == message_id))
        ).first()
        if delivery is not None and delivery.id is not None:
            match = await _match_delivery(session, delivery.id, MatchedBy.message_id)
            if match is not None:
                return match
        # Our Message-IDs name their delivery and carry a keyed tag: trust the id if the tag
        # matches, even if the outcome was never recorded (a crash between send and record).
        delivery_id = delivery_of_message_id(settings, tokens, message_id)
        if delivery_id is not None:
            match = await _match_delivery(session, delivery_id, MatchedBy.message_id)
            if match is not None:
                return match
    for address in report.recipients:
        subscriber = await subscriber_by_email(
            session, tokens=tokens, email=address, include_erased=False
        )
        if subscriber is not None:
            return Match(subscriber, MatchedBy.address)
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
    # Matched only by an address the report names (no signed VERP, no Message-ID of ours):
    # anyone can write such a report, so it counts as a soft bounce, never a suppression.
    unverified: list[str] = field(default_factory=list)


async def process_returned_mail(
    session: AsyncSession,
    *,
    settings: Settings,
    tokens: Tokens,
    messages: Iterable[tuple[str, bytes]],
    kinds: Kinds | None = None,
) -> ProcessSummary:
    """Apply every readable report in (name, raw message) pairs, each at most once ever (by its
    `report_id`); list the rest."""
    summary = ProcessSummary()
    complained: set[int | None] = set()
    for name, raw in messages:
        summary.processed += 1
        try:
            report = parse_report(raw)
        except UnreadableReport as exc:
            summary.unreadable.append((name, str(exc)))
            continue
        matched = await match_report(session, settings=settings, tokens=tokens, report=report)
        if matched is None:
            summary.unmatched.append(name)
            continue
        subscriber, how = matched.subscriber, matched.how
        bounce_type, reason = report.type, report.reason
        if how == MatchedBy.address and bounce_type != BounceType.soft:
            summary.unverified.append(name)
            reason = f"unverified {bounce_type} (matched by address only): {reason}"
            bounce_type = BounceType.soft
        outcome = await apply_bounce(
            session,
            subscriber=subscriber,
            type=bounce_type,
            reason=reason,
            source=BounceSource.mailbox,
            report_id=report.report_id,
            digest_id=matched.digest_id,
            soft_bounce_limit=settings.soft_bounce_limit,
        )
        if outcome is None:
            summary.already_processed += 1
            continue
        if bounce_type == BounceType.complaint:
            complained.add(outcome.digest_id)
        summary.suppressed += outcome.changed
        if bounce_type == BounceType.hard:
            summary.hard += 1
        elif bounce_type == BounceType.soft:
            summary.soft += 1
        else:
            summary.complaints += 1
    if kinds is not None and complained:
        await check_breakers(session, settings=settings, kinds=kinds, digest_ids=complained)
    return summary


# --- Undoing bounces ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Unbounced:
    subscriber_id: int
    email: str | None
    bounced_at: datetime | None
    restored_to: str  # confirmed, or pending for a reader who never confirmed


async def unbounce(
    session: AsyncSession,
    *,
    since: datetime,
    digest_id: int | None = None,
    dry_run: bool = False,
) -> list[Unbounced]:
    """Restore readers marked bounced since `since` (only those whose copy of `digest_id`
    failed, when given): a relay that refused everyone before this service could tell, or a
    wrong bounce report. Each goes back to `confirmed` (`pending` if they never confirmed), with
    an `unbounced` line in their history; their failed copies of a digest still being sent (or
    paused) are queued again. `dry_run`: only the list."""
    where = [
        col(Subscriber.status) == SubscriberStatus.bounced,
        col(Subscriber.bounced_at) >= since,
        col(Subscriber.erased_at).is_(None),
    ]
    if digest_id is not None:
        failed_copy = (
            sa.select(col(Delivery.id))
            .where(
                col(Delivery.subscriber_id) == col(Subscriber.id),
                col(Delivery.digest_id) == digest_id,
                col(Delivery.kind) == DeliveryKind.digest,
                col(Delivery.status) == DeliveryStatus.failed,
            )
            .exists()
        )
        where.append(failed_copy)
    subscribers = (
        await session.exec(select(Subscriber).where(*where).order_by(col(Subscriber.id)))
    ).all()
    restored: list[Unbounced] = []
    for subscriber in subscribers:
        assert subscriber.id is not None
        to = (
            SubscriberStatus.confirmed
            if subscriber.confirmed_at is not None
            else SubscriberStatus.pending
        )
        restored.append(
            Unbounced(
                subscriber_id=subscriber.id,
                email=subscriber.email,
                bounced_at=as_utc(subscriber.bounced_at) if subscriber.bounced_at else None,
                restored_to=to,
            )
        )
        if dry_run:
            continue
        detail = f"bounce undone: bounced since {since.isoformat()}"
        if digest_id is not None:
            detail += f", digest {digest_id}"
        await change_status(
            session, subscriber, to=to, event=SubscriberEventType.unbounced, detail=detail
        )
    if restored and not dry_run:
        unfinished = sa.select(col(Digest.id)).where(
            col(Digest.status).in_([DigestStatus.sending, DigestStatus.paused])
        )
        await session.execute(
            sa.update(Delivery)
            .where(
                col(Delivery.subscriber_id).in_([r.subscriber_id for r in restored]),
                col(Delivery.kind) == DeliveryKind.digest,
                col(Delivery.status) == DeliveryStatus.failed,
                col(Delivery.digest_id).in_(unfinished),
            )
            .values(
                status=DeliveryStatus.queued,
                attempts=0,
                next_attempt_at=utcnow(),
                last_error=None,
                leased_by=None,
                lease_until=None,
            )
            .execution_options(synchronize_session=False)
        )
        await session.flush()
    return restored
