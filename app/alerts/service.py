"""Incidents: what the editors must hear of, each told once.

An incident has a key naming the condition (`send:12:paused`, `feed:<hash>:failing`). Raising a
condition that is already open does nothing, so a send paused by two workers at once, or a feed
failing poll after poll, tells the editors once; once resolved (the send resumed, the feed came
back), the same condition raised again is a new incident and is told again.

Raising only writes the incident, in the caller's transaction (a rollback drops it with the
rest). A worker then tells it (`tell_pending`): one outbox row per ALERT_EMAILS address (the
`alert` delivery kind: the sender sends them like any other email) and, with ALERT_WEBHOOK_URL,
one POST. Telling is a conditional UPDATE, so of two workers exactly one tells an incident.

Other rooms call the functions at the bottom: `send_paused`, `setup_broken`/`setup_working`,
`feed_failed`/`feed_recovered`, `schedule_run_failed`/`schedule_run_succeeded`,
`check_bounce_rate`.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.config import Settings
from app.models import (
    AlertIncident,
    Delivery,
    DeliveryKind,
    DeliveryStatus,
    WebhookStatus,
    utcnow,
)
from app.outbox import queue as outbox

log = logging.getLogger("app.alerts")


# --- Incidents -------------------------------------------------------------------------------


async def raise_incident(
    session: AsyncSession, *, key: str, kind: str, params: dict[str, Any]
) -> bool:
    """Open the incident `key` (or reopen it if it was resolved); True when it is new, False
    when it was open already (nobody is told again)."""
    now = utcnow()
    values = {
        "key": key[:200],
        "kind": kind,
        "params": params,
        "opened_at": now,
        "times_opened": 1,
        "webhook_status": WebhookStatus.none.value,
        "webhook_attempts": 0,
    }
    dialect = session.get_bind().dialect.name
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(AlertIncident)
    inserted = await session.execute(
        insert.values(**values).on_conflict_do_nothing(index_elements=["key"])
    )
    if getattr(inserted, "rowcount", 0):
        log.warning("incident opened: %s", key, extra={"incident": key})
        return True
    # Already there: reopened only if it had been resolved (one UPDATE: of two racing workers,
    # one wins, the other sees it open).
    reopened = await session.execute(
        sa.update(AlertIncident)
        .where(col(AlertIncident.key) == key[:200], col(AlertIncident.resolved_at).is_not(None))
        .values(
            params=params,
            opened_at=now,
            resolved_at=None,
            told_at=None,
            times_opened=AlertIncident.times_opened + 1,
            webhook_status=WebhookStatus.none.value,
            webhook_attempts=0,
            webhook_next_at=None,
            webhook_error=None,
        )
        .execution_options(synchronize_session=False)
    )
    if getattr(reopened, "rowcount", 0):
        log.warning("incident reopened: %s", key, extra={"incident": key})
        return True
    return False


async def resolve_incident(session: AsyncSession, *, key: str) -> bool:
    """The condition is over: the next time it is raised, the editors hear of it again."""
    result = await session.execute(
        sa.update(AlertIncident)
        .where(col(AlertIncident.key) == key[:200], col(AlertIncident.resolved_at).is_(None))
        .values(resolved_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


async def tell_pending(session: AsyncSession, *, settings: Settings) -> list[int]:
    """Queue the emails (and mark the webhook due) of incidents nobody told yet; the ids told.
    The caller commits."""
    ids = (
        await session.exec(
            select(AlertIncident.id)
            .where(col(AlertIncident.told_at).is_(None))
            .order_by(col(AlertIncident.id))
            .limit(100)
        )
    ).all()
    told: list[int] = []
    webhook = WebhookStatus.pending if settings.alert_webhook_url else WebhookStatus.none
    for incident_id in ids:
        claimed = await session.execute(
            sa.update(AlertIncident)
            .where(col(AlertIncident.id) == incident_id, col(AlertIncident.told_at).is_(None))
            .values(told_at=utcnow(), webhook_status=webhook.value)
            .execution_options(synchronize_session=False)
        )
        if not getattr(claimed, "rowcount", 0):
            continue  # another worker told it
        assert incident_id is not None
        for address in settings.alert_email_list:
            outbox.enqueue(
                session,
                kind=DeliveryKind.alert.value,
                to_address=address,
                language=settings.default_language,
                alert_id=incident_id,
            )
        told.append(incident_id)
    if told and not settings.alert_email_list and not settings.alert_webhook_url:
        log.warning("incidents %s: set ALERT_EMAILS or ALERT_WEBHOOK_URL to hear of them", told)
    return told


# --- The conditions other rooms raise ----------------------------------------------------------


def send_paused_key(digest_id: int) -> str:
    return f"send:{digest_id}:paused"


async def send_paused(session: AsyncSession, *, digest_id: int, reason: str) -> bool:
    """A send paused itself (broken relay or setup, a relay refusing everyone, a breaker)."""
    return await raise_incident(
        session,
        key=send_paused_key(digest_id),
        kind="send_paused",
        params={"digest_id": digest_id, "reason": reason[:1000]},
    )


async def send_resumed(session: AsyncSession, *, digest_id: int) -> None:
    await resolve_incident(session, key=send_paused_key(digest_id))


SETUP_KEY = "setup:dkim"


async def setup_broken(session: AsyncSession, *, process: str, error: str) -> bool:
    """A sender refused to start (the DKIM key unreadable or half configured)."""
    return await raise_incident(
        session,
        key=SETUP_KEY,
        kind="setup_broken",
        params={"process": process[:100], "error": error[:1000]},
    )


async def setup_working(session: AsyncSession) -> None:
    """A sender started with a setup that works."""
    await resolve_incident(session, key=SETUP_KEY)


def _feed_key(url: str) -> str:
    return f"feed:{hashlib.sha256(url.encode()).hexdigest()[:24]}:failing"


async def feed_failed(
    session: AsyncSession, *, settings: Settings, url: str, failures: int, error: str
) -> bool:
    """A poll of `url` failed, the `failures`-th in a row: an incident from ALERT_FEED_FAILURES."""
    if failures < settings.alert_feed_failures:
        return False
    return await raise_incident(
        session,
        key=_feed_key(url),
        kind="feed_failing",
        params={"url": url, "failures": failures, "error": error[:500]},
    )


async def feed_recovered(session: AsyncSession, *, url: str) -> None:
    await resolve_incident(session, key=_feed_key(url))


def _schedule_key(schedule_id: int) -> str:
    return f"schedule:{schedule_id}:failing"


async def schedule_run_failed(
    session: AsyncSession, *, schedule_id: int, name: str, slot: datetime, error: str
) -> bool:
    """For the scheduler: a run failed. Told once until a run of that schedule succeeds
    (`schedule_run_succeeded`), however many slots fail meanwhile."""
    return await raise_incident(
        session,
        key=_schedule_key(schedule_id),
        kind="schedule_failed",
        params={
            "schedule_id": schedule_id,
            "name": name[:200],
            "slot": slot.isoformat(timespec="minutes"),
            "error": error[:500],
        },
    )


async def schedule_run_succeeded(session: AsyncSession, *, schedule_id: int) -> None:
    await resolve_incident(session, key=_schedule_key(schedule_id))


async def check_bounce_rate(session: AsyncSession, *, settings: Settings, digest_id: int) -> bool:
    """After a hard bounce during send `digest_id`: past ALERT_BOUNCE_RATE of its attempts
    (once it has ALERT_BOUNCE_MIN_ATTEMPTS), one incident for that send. Callers throttle it:
    it counts the send's rows."""
    key = f"send:{digest_id}:bounce_rate"
    told = await session.exec(select(AlertIncident.id).where(AlertIncident.key == key))
    if told.first() is not None:
        return False  # one per send, never resolved: no need to count again
    counts = dict(
        (
            await session.execute(
                sa.select(col(Delivery.status), sa.func.count())
                .where(
                    col(Delivery.digest_id) == digest_id,
                    col(Delivery.kind) == DeliveryKind.digest,
                    col(Delivery.status).in_([DeliveryStatus.sent, DeliveryStatus.failed]),
                )
                .group_by(col(Delivery.status))
            )
        ).all()
    )
    bounced = int(counts.get(DeliveryStatus.failed, 0))
    attempted = bounced + int(counts.get(DeliveryStatus.sent, 0))
    if attempted < settings.alert_bounce_min_attempts:
        return False
    rate = bounced / attempted
    if rate <= settings.alert_bounce_rate:
        return False
    return await raise_incident(
        session,
        key=key,
        kind="bounce_rate",
        params={
            "digest_id": digest_id,
            "bounced": bounced,
            "attempted": attempted,
            "rate": f"{rate:.1%}",
            "line": f"{settings.alert_bounce_rate:.1%}",
        },
    )
