"""What each send's messages became, per recipient domain, and the pace workers keep for it.

Counters, not queries over the outbox: workers add to them as they record outcomes, the bounce
handling adds complaints. A send's figures are then a read of one row per recipient domain
(a few hundred for a million readers), whatever the size of the list.

The counters are as durable as the outcomes they count: `delivered` is written in the same
transaction as the rows' `sent` status (app.worker.recorder), `bounced` with the bounce.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.models import Delivery, DeliveryStatus, SendPace, SendTally, Subscriber, utcnow

OUTCOMES = ("delivered", "deferred", "bounced", "complaints")
PACE_FRESH = timedelta(seconds=60)  # a pace older than this is a worker that stopped sending
UNKNOWN_DOMAIN = "(unknown)"

# (kind, send id, domain) -> added counts by outcome
TallyKey = tuple[str, int, str]


def domain_of(address: str | None) -> str:
    """The recipient domain as counted: lower-cased, IDNA left as it came."""
    if not address or "@" not in address:
        return UNKNOWN_DOMAIN
    return address.rsplit("@", 1)[1].strip().lower()[:255] or UNKNOWN_DOMAIN


@dataclass(slots=True)
class Counts:
    delivered: int = 0
    deferred: int = 0
    bounced: int = 0
    complaints: int = 0

    @property
    def attempts(self) -> int:
        """Messages the relay answered for good (a deferral is tried again)."""
        return self.delivered + self.bounced

    def minus(self, other: Counts) -> Counts:
        return Counts(
            max(0, self.delivered - other.delivered),
            max(0, self.deferred - other.deferred),
            max(0, self.bounced - other.bounced),
            max(0, self.complaints - other.complaints),
        )


def _insert(session: AsyncSession, table: type[SendTally] | type[SendPace]) -> Any:
    """INSERT ... ON CONFLICT, in the dialect's spelling (both have it)."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


async def add(session: AsyncSession, counts: Mapping[TallyKey, Mapping[str, int]]) -> None:
    """Add to the counters in ONE statement (a multi-row INSERT ... ON CONFLICT DO UPDATE that
    adds): atomic with any number of workers, one round trip whatever the number of domains."""
    rows = [
        {"kind": kind, "send_id": send_id, "domain": domain}
        | {o: int(added.get(o, 0)) for o in OUTCOMES}
        for (kind, send_id, domain), added in counts.items()
        if any(added.values())
    ]
    if not rows:
        return
    stmt = _insert(session, SendTally).values(rows)
    table = SendTally.__table__  # type: ignore[attr-defined]
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=["kind", "send_id", "domain"],
            set_={o: table.c[o] + stmt.excluded[o] for o in OUTCOMES},
        )
    )


async def totals(session: AsyncSession, *, kind: str, send_id: int) -> Counts:
    row = (
        await session.execute(
            sa.select(
                *(sa.func.coalesce(sa.func.sum(col(getattr(SendTally, o))), 0) for o in OUTCOMES)
            ).where(col(SendTally.kind) == kind, col(SendTally.send_id) == send_id)
        )
    ).one()
    return Counts(*(int(v) for v in row))


async def totals_of(
    session: AsyncSession, *, kind: str, send_ids: Iterable[int]
) -> dict[int, Counts]:
    """The counters of several sends, summed over their domains (one grouped query)."""
    rows = (
        await session.execute(
            sa.select(
                col(SendTally.send_id),
                *(sa.func.sum(col(getattr(SendTally, o))) for o in OUTCOMES),
            )
            .where(col(SendTally.kind) == kind, col(SendTally.send_id).in_(list(send_ids)))
            .group_by(col(SendTally.send_id))
        )
    ).all()
    return {int(r[0]): Counts(*(int(v or 0) for v in r[1:])) for r in rows}


async def by_domain(
    session: AsyncSession, *, kind: str, send_id: int, limit: int
) -> tuple[list[tuple[str, Counts]], int]:
    """The `limit` domains with the most messages, and how many domains there are."""
    volume = (col(SendTally.delivered) + col(SendTally.deferred) + col(SendTally.bounced)).label(
        "volume"
    )
    where = (col(SendTally.kind) == kind, col(SendTally.send_id) == send_id)
    rows = (
        await session.execute(
            sa.select(
                col(SendTally.domain),
                *(col(getattr(SendTally, o)) for o in OUTCOMES),
            )
            .where(*where)
            .order_by(volume.desc(), col(SendTally.domain))
            .limit(limit)
        )
    ).all()
    total = (
        await session.execute(sa.select(sa.func.count()).select_from(SendTally).where(*where))
    ).scalar_one()
    return [(r[0], Counts(*r[1:])) for r in rows], int(total)


async def latest_send_of(
    session: AsyncSession, *, subscriber_id: int, kinds: Iterable[str]
) -> tuple[str, int] | None:
    """The send (kind, id) of the reader's latest copy that went out (the last sent: a paused
    send resumed later may have gone out after a newer one): what a complaint or a bounce
    report that names only an address is about, and what an unsubscribe counts for."""
    row = (
        await session.execute(
            sa.select(col(Delivery.kind), col(Delivery.digest_id))
            .where(
                col(Delivery.subscriber_id) == subscriber_id,
                col(Delivery.kind).in_(list(kinds)),
                col(Delivery.digest_id).is_not(None),
                col(Delivery.status) == DeliveryStatus.sent,
            )
            .order_by(col(Delivery.sent_at).desc().nulls_last(), col(Delivery.id).desc())
            .limit(1)
        )
    ).first()
    if row is None or row[1] is None:
        return None
    return str(row[0]), int(row[1])


async def subscriber_domain(session: AsyncSession, *, subscriber_id: int) -> str:
    email = (
        await session.execute(select(Subscriber.email).where(col(Subscriber.id) == subscriber_id))
    ).scalar_one_or_none()
    return domain_of(email)


# --- Pace ----------------------------------------------------------------------------------------


async def report_pace(
    session: AsyncSession,
    *,
    worker_id: str,
    sends: Iterable[tuple[str, int]],
    rate_per_second: float | None,
    throttled_at: datetime | None,
    now: datetime | None = None,
) -> None:
    """The worker's current pace for each send it is sending (one upsert each)."""
    now = now or utcnow()
    for kind, send_id in sends:
        stmt = _insert(session, SendPace).values(
            kind=kind,
            send_id=send_id,
            worker_id=worker_id,
            rate_per_second=rate_per_second,
            throttled_at=throttled_at,
            updated_at=now,
        )
        await session.execute(
            stmt.on_conflict_do_update(
                index_elements=["kind", "send_id", "worker_id"],
                set_={
                    "rate_per_second": stmt.excluded.rate_per_second,
                    "throttled_at": stmt.excluded.throttled_at,
                    "updated_at": stmt.excluded.updated_at,
                },
            )
        )


@dataclass(frozen=True, slots=True)
class SendPaceNow:
    # The sum of the pace of the workers sending it; None when none paces (unlimited).
    rate_per_second: float | None
    throttled_at: datetime | None  # the relay's last throttling reply, any worker


async def pace_of(
    session: AsyncSession, *, kind: str, send_ids: Iterable[int], now: datetime | None = None
) -> dict[int, SendPaceNow]:
    """Of the workers that reported within PACE_FRESH: their summed pace per send."""
    now = now or utcnow()
    rows = (
        await session.execute(
            sa.select(
                col(SendPace.send_id), col(SendPace.rate_per_second), col(SendPace.throttled_at)
            ).where(
                col(SendPace.kind) == kind,
                col(SendPace.send_id).in_(list(send_ids)),
                col(SendPace.updated_at) >= now - PACE_FRESH,
            )
        )
    ).all()
    rates: dict[int, float | None] = {}
    throttled: dict[int, datetime | None] = {}
    for send_id, rate, at in rows:
        if rate is not None:
            rates[send_id] = (rates.get(send_id) or 0.0) + rate
        else:
            rates.setdefault(send_id, None)
        if at is not None:
            last = throttled.get(send_id)
            throttled[send_id] = at if last is None or at > last else last
    return {
        send_id: SendPaceNow(rates.get(send_id), throttled.get(send_id))
        for send_id in set(rates) | set(throttled)
    }
