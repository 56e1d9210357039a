"""The subscriber state machine: the one function that moves a subscriber between statuses.

    pending ──confirm──> confirmed ──unsubscribe──> unsubscribed ──resubscribe──> confirmed
       │                    │  └──hard bounce / soft limit──> bounced ──unbounce──> confirmed
       │                    └──complaint──> complained
       └── any suppressed status ──a new signup (double opt-in)──> pending

Every change writes the subscriber's history (an enum, not free text), sets the status's
timestamp, and applies the suppression rule: a subscriber who leaves the list (unsubscribed,
bounced, complained) is mailed nothing more, including copies already queued or in a worker's
hands.
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel.ext.asyncio.session import AsyncSession

from app import metrics
from app.models import (
    SUPPRESSED_STATUSES,
    DeliveryKind,
    Subscriber,
    SubscriberEvent,
    SubscriberEventType,
    SubscriberStatus,
    utcnow,
)
from app.outbox import queue as outbox
from app.outbox import tally

# Which transitions exist: (from, to). Anything else is a bug in the caller.
_ALLOWED: set[tuple[SubscriberStatus, SubscriberStatus]] = {
    (SubscriberStatus.pending, SubscriberStatus.confirmed),
    (SubscriberStatus.confirmed, SubscriberStatus.unsubscribed),
    (SubscriberStatus.pending, SubscriberStatus.unsubscribed),
    (SubscriberStatus.unsubscribed, SubscriberStatus.confirmed),
    (SubscriberStatus.bounced, SubscriberStatus.confirmed),
    *((s, SubscriberStatus.pending) for s in SUPPRESSED_STATUSES),
    *(
        (s, t)
        for s in (SubscriberStatus.pending, SubscriberStatus.confirmed)
        for t in (SubscriberStatus.bounced, SubscriberStatus.complained)
    ),
    (SubscriberStatus.unsubscribed, SubscriberStatus.bounced),
    (SubscriberStatus.unsubscribed, SubscriberStatus.complained),
    (SubscriberStatus.bounced, SubscriberStatus.complained),
}


class InvalidTransition(ValueError):
    pass


def record_event(
    session: AsyncSession,
    subscriber: Subscriber,
    event: SubscriberEventType,
    detail: str | None = None,
    *,
    now: datetime | None = None,
    digest_id: int | None = None,
) -> None:
    """Add one line to the subscriber's history (no status change)."""
    assert subscriber.id is not None
    session.add(
        SubscriberEvent(
            subscriber_id=subscriber.id,
            event=event.value,
            detail=detail[:1000] if detail else None,
            created_at=now or utcnow(),
            digest_id=digest_id,
        )
    )


async def change_status(
    session: AsyncSession,
    subscriber: Subscriber,
    *,
    to: SubscriberStatus,
    event: SubscriberEventType,
    detail: str | None = None,
    now: datetime | None = None,
) -> bool:
    """Move `subscriber` to `to`, recording `event`; False (and nothing written) when it is
    already there. Leaving the list revokes every copy still queued or held by a worker."""
    previous = SubscriberStatus(subscriber.status)
    if previous == to:
        return False
    if (previous, to) not in _ALLOWED:
        raise InvalidTransition(f"a subscriber cannot go from {previous} to {to}")
    now = now or utcnow()
    subscriber.status = to
    subscriber.updated_at = now
    if to == SubscriberStatus.confirmed:
        subscriber.confirmed_at = subscriber.confirmed_at or now
        subscriber.unsubscribed_at = None
    elif to == SubscriberStatus.unsubscribed:
        subscriber.unsubscribed_at = subscriber.unsubscribed_at or now
    elif to == SubscriberStatus.bounced:
        subscriber.bounced_at = now
    if event == SubscriberEventType.confirmed:
        metrics.count_confirmation()
    elif event == SubscriberEventType.unsubscribed:
        metrics.count_unsubscribe()
    session.add(subscriber)
    digest_id = None
    if event == SubscriberEventType.unsubscribed:
        assert subscriber.id is not None
        last = await tally.latest_send_of(
            session, subscriber_id=subscriber.id, kinds=[DeliveryKind.digest.value]
        )
        digest_id = last[1] if last is not None else None
    record_event(session, subscriber, event, detail, now=now, digest_id=digest_id)
    if to in SUPPRESSED_STATUSES:
        assert subscriber.id is not None
        await outbox.skip_subscriber_deliveries(session, subscriber_id=subscriber.id, why=to)
    await session.flush()
    return True
