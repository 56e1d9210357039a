"""What the desk shows that the API services do not already give: the overview's figures and
problems, the bounce log, a subscriber by id. Everything else goes through the domains' own
services (digests, subscribers, articles, keys)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.config import Settings
from app.models import (
    ApiKey,
    BounceEvent,
    Delivery,
    DeliveryStatus,
    Digest,
    DigestStatus,
    Subscriber,
    SubscriberStatus,
    utcnow,
)

CHART_DAYS = 30


@dataclass(frozen=True, slots=True)
class DayCounts:
    day: date
    signups: int
    unsubscribes: int


@dataclass(frozen=True, slots=True)
class Problem:
    key: str  # a desk string
    values: dict[str, object]


async def subscribers_by_status(session: AsyncSession) -> dict[str, int]:
    """Listed subscribers (erased ones are not) per status, every status present."""
    rows = (
        await session.exec(
            select(Subscriber.status, func.count())
            .where(col(Subscriber.erased_at).is_(None))
            .group_by(col(Subscriber.status))
        )
    ).all()
    counts = {status.value: 0 for status in SubscriberStatus}
    counts.update({status: int(count) for status, count in rows})
    return counts


async def confirmed_readers(session: AsyncSession) -> int:
    """How many readers a send would reach now (what the send confirmation names)."""
    return int(
        (
            await session.exec(
                select(func.count())
                .select_from(Subscriber)
                .where(col(Subscriber.status) == SubscriberStatus.confirmed)
            )
        ).one()
    )


async def _per_day(session: AsyncSession, column: Any, since: datetime) -> dict[date, int]:
    day = func.date(column)
    rows = (
        await session.exec(select(day, func.count()).where(column >= since).group_by(day))
    ).all()
    # PostgreSQL answers a date, SQLite a 'YYYY-MM-DD' string.
    return {date.fromisoformat(str(value)[:10]): int(count) for value, count in rows}


async def signups_per_day(session: AsyncSession, *, today: date | None = None) -> list[DayCounts]:
    today = today or utcnow().date()
    first = today - timedelta(days=CHART_DAYS - 1)
    since = datetime(first.year, first.month, first.day, tzinfo=utcnow().tzinfo)
    signups = await _per_day(session, col(Subscriber.created_at), since)
    unsubscribes = await _per_day(session, col(Subscriber.unsubscribed_at), since)
    days = [first + timedelta(days=n) for n in range(CHART_DAYS)]
    return [DayCounts(d, signups.get(d, 0), unsubscribes.get(d, 0)) for d in days]


async def problems(session: AsyncSession, *, settings: Settings) -> list[Problem]:
    found: list[Problem] = []
    if not (settings.dkim_domain and settings.dkim_selector and settings.dkim_private_key_path):
        found.append(Problem("problem_dkim", {}))
    if not settings.organization_address.strip():
        found.append(Problem("problem_address", {}))
    if not settings.site_name.strip():
        found.append(Problem("problem_site_name", {"name": settings.brand_name or "—"}))
    # A failing relay shows in the outbox: copies waiting for a retry, with the relay's answer.
    retrying = select(Delivery).where(
        col(Delivery.status) == DeliveryStatus.queued,
        col(Delivery.attempts) > 0,
        col(Delivery.last_error).is_not(None),
    )
    waiting = (await session.exec(select(func.count()).select_from(retrying.subquery()))).one()
    if waiting:
        last = (
            await session.exec(retrying.order_by(col(Delivery.next_attempt_at).desc()).limit(1))
        ).first()
        found.append(
            Problem("problem_relay", {"count": waiting, "error": last.last_error if last else ""})
        )
    paused = (
        await session.exec(
            select(Digest).where(col(Digest.status) == DigestStatus.paused).order_by(col(Digest.id))
        )
    ).all()
    for digest in paused:
        found.append(Problem("problem_paused", {"id": digest.id, "reason": digest.paused_reason}))
    return found


@dataclass(frozen=True, slots=True)
class BounceLine:
    bounce: BounceEvent
    subscriber_id: int
    email: str | None
    status: str


async def bounce_log(
    session: AsyncSession, *, limit: int = 50, offset: int = 0
) -> tuple[list[BounceLine], int]:
    """Newest first, with the reader each report concerns and whether it took them off the list."""
    rows = (
        await session.exec(
            select(BounceEvent, Subscriber.email, Subscriber.status)
            .join(Subscriber, col(Subscriber.id) == col(BounceEvent.subscriber_id))
            .order_by(col(BounceEvent.created_at).desc(), col(BounceEvent.id).desc())
            .limit(limit)
            .offset(offset)
        )
    ).all()
    total = (await session.exec(select(func.count()).select_from(BounceEvent))).one()
    return [BounceLine(b, b.subscriber_id, email, status) for b, email, status in rows], int(total)


async def subscriber_by_id(session: AsyncSession, *, subscriber_id: int) -> Subscriber | None:
    """A listed subscriber (erased ones hold nothing to show)."""
    subscriber = await session.get(Subscriber, subscriber_id)
    if subscriber is None or subscriber.erased_at is not None:
        return None
    return subscriber


async def api_keys(session: AsyncSession) -> list[ApiKey]:
    return list((await session.exec(select(ApiKey).order_by(col(ApiKey.created_at).desc()))).all())


SECRET_SETTINGS = {
    "secret_key",
    "secret_key_fallbacks",
    "smtp_password",
    "bounce_webhook_secret",
}


def settings_view(settings: Settings) -> list[tuple[str, str]]:
    """Every setting as NAME, value; secrets masked, a database password hidden."""
    lines = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if name in SECRET_SETTINGS:
            shown = "••••••••" if value else ""
        elif name == "database_url":
            shown = sa.engine.make_url(str(value)).render_as_string(hide_password=True)
        else:
            shown = "" if value is None else str(value)
        lines.append((name.upper(), shown))
    return lines
