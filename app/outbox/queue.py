"""The durable outbox: every email is a `delivery` row first. Domains `enqueue` rows in the
transaction of the data they belong to; workers claim them under a lease and record what became
of each. Only the worker holding a row's lease writes its outcome.

Claiming is one UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED) on PostgreSQL, so
any number of workers share the queue without two of them holding the same row; SQLite runs
the same statement atomically (one writer at a time).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import SQLModel, col, or_, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.models import SUPPRESSED_STATUSES, Delivery, DeliveryStatus, Subscriber, utcnow
from app.outbox import signals


@dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    kind: str
    subscriber_id: int | None
    digest_id: int | None
    to_address: str | None
    language: str | None
    attempts: int


_CLAIMED_COLUMNS = (
    col(Delivery.id),
    col(Delivery.kind),
    col(Delivery.subscriber_id),
    col(Delivery.digest_id),
    col(Delivery.to_address),
    col(Delivery.language),
    col(Delivery.attempts),
)


# --- Enqueue: the one way rows are added ----------------------------------------------------


def enqueue(
    session: AsyncSession,
    *,
    kind: str,
    subscriber_id: int | None = None,
    digest_id: int | None = None,
    to_address: str | None = None,
    language: str | None = None,
    alert_id: int | None = None,
) -> Delivery:
    """Queue one email, in the caller's transaction (a rollback drops it with the rest)."""
    delivery = Delivery(
        kind=kind,
        subscriber_id=subscriber_id,
        digest_id=digest_id,
        to_address=to_address,
        language=language,
        alert_id=alert_id,
    )
    session.add(delivery)
    return delivery


async def enqueue_selected(
    session: AsyncSession,
    *,
    kind: str,
    recipients: sa.Select[int | None, str],
    digest_id: int | None = None,
    now: datetime | None = None,
) -> int:
    """Queue one email per row of `recipients` (subscriber id, language) in ONE statement
    (INSERT ... SELECT): a million readers stay one round trip, not a million. Returns how many
    were queued; call `refresh_statistics` after a big one."""
    now = now or utcnow()
    subquery = recipients.subquery()
    columns = list(subquery.c)
    rows = sa.select(
        sa.literal(kind),
        columns[0],
        sa.literal(digest_id, sa.Integer),
        columns[1],
        sa.literal(DeliveryStatus.queued.value),
        sa.literal(0),
        sa.literal(now, sa.DateTime(timezone=True)),
        sa.literal(now, sa.DateTime(timezone=True)),
    )
    result = await session.execute(
        sa.insert(Delivery).from_select(
            [
                "kind",
                "subscriber_id",
                "digest_id",
                "language",
                "status",
                "attempts",
                "next_attempt_at",
                "created_at",
            ],
            rows,
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)


# --- Claim -------------------------------------------------------------------------------------


def _claimable(now: datetime) -> tuple[sa.ColumnElement[bool], ...]:
    """The two ways a row is due, each claimed by its own query, each with its own index:
    queued rows in claim order (`ix_delivery_queued`), and rows whose lease ran out because
    their worker died (SIGKILL, lost host: `ix_delivery_leased`). One query with an OR of the
    two could use neither index's order and sorted the whole queue for every batch."""
    return (
        sa.and_(
            col(Delivery.status) == DeliveryStatus.sending,
            col(Delivery.lease_until) < now,
        ),
        sa.and_(
            col(Delivery.status) == DeliveryStatus.queued,
            col(Delivery.next_attempt_at) <= now,
        ),
    )


def claim_statement(
    *,
    worker_id: str,
    limit: int,
    lease_seconds: int,
    due: sa.ColumnElement[bool],
    order_by: Sequence[Any],
    only: sa.ColumnElement[bool] | None,
    now: datetime,
    dialect: str,
) -> sa.Update:
    where = due if only is None else sa.and_(due, only)
    ids = (
        select(Delivery.id)
        .where(where)
        .order_by(*order_by)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).scalar_subquery()
    # PostgreSQL: `id = ANY(ARRAY(subquery))`, an array made once, then primary-key look-ups.
    # With `id IN (subquery)` the planner joined the picked ids to a sequential scan of the
    # whole table up to a few hundred thousand rows (5 ms a claim at 60,000 rows, growing with
    # every copy ever sent).
    picked = (
        col(Delivery.id) == sa.any_(sa.func.array(ids))
        if dialect == "postgresql"
        else col(Delivery.id).in_(ids)
    )
    return (
        sa.update(Delivery)
        .where(picked)
        .values(
            status=DeliveryStatus.sending,
            lease_until=now + timedelta(seconds=lease_seconds),
            leased_by=worker_id,
        )
        .returning(*_CLAIMED_COLUMNS)
    )


def claim_statements(
    *,
    worker_id: str,
    limit: int,
    lease_seconds: int,
    only: sa.ColumnElement[bool] | None = None,
    now: datetime,
    dialect: str,
    queued_limit: int | None = None,
) -> tuple[sa.Update, sa.Update]:
    """(expired leases, queued rows oldest first): what `claim_batch` runs, in that order."""
    expired, queued = _claimable(now)
    return (
        claim_statement(
            worker_id=worker_id,
            limit=limit,
            lease_seconds=lease_seconds,
            due=expired,
            order_by=(col(Delivery.lease_until),),
            only=only,
            now=now,
            dialect=dialect,
        ),
        claim_statement(
            worker_id=worker_id,
            limit=limit if queued_limit is None else queued_limit,
            lease_seconds=lease_seconds,
            due=queued,
            order_by=(col(Delivery.next_attempt_at), col(Delivery.id)),
            only=only,
            now=now,
            dialect=dialect,
        ),
    )


async def claim_batch(
    session: AsyncSession,
    *,
    worker_id: str,
    limit: int,
    lease_seconds: int,
    only: sa.ColumnElement[bool] | None = None,
    now: datetime | None = None,
) -> list[Claimed]:
    """Lease up to `limit` due rows: rows of dead workers first, then queued rows oldest first.
    `only`: a further condition the delivery kinds put on what may go out now (a paused
    digest's copies wait). Each query reads the head of an index: the cost of a claim does not
    grow with the queue."""
    now = now or utcnow()
    dialect = session.get_bind().dialect.name

    def statements(queued_limit: int | None = None) -> tuple[sa.Update, sa.Update]:
        return claim_statements(
            worker_id=worker_id,
            limit=limit,
            lease_seconds=lease_seconds,
            only=only,
            now=now,
            dialect=dialect,
            queued_limit=queued_limit,
        )

    expired, _ = statements()
    claimed = [Claimed(*row) for row in (await session.execute(expired)).all()]
    if len(claimed) < limit:
        _, queued = statements(queued_limit=limit - len(claimed))
        claimed += [Claimed(*row) for row in (await session.execute(queued)).all()]
    claimed.sort(key=lambda c: c.id)
    return claimed


async def refresh_statistics(session: AsyncSession) -> None:
    """After a bulk enqueue: the planner's row counts for `delivery` are those of before it
    (PostgreSQL estimated 101 rows for a million), so refresh them in the same transaction
    (ANALYZE counts the transaction's own new rows; SQLite: the same statement)."""
    await session.execute(sa.text("ANALYZE delivery"))


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


# The hot path's only write per message, PostgreSQL's spelling: one statement for a group of
# any size (arrays, not a VALUES list whose SQL changes with the group), compiled once.
_MARK_SENT_PG = sa.text(
    "UPDATE delivery AS d SET status = 'sent', sent_at = :now, lease_until = NULL, "
    "attempts = d.attempts + 1, message_id = given.mid "
    "FROM unnest(CAST(:ids AS integer[]), CAST(:mids AS varchar[])) AS given(id, mid) "
    "WHERE d.id = given.id AND d.leased_by = :worker AND d.status = 'sending'"
)


async def mark_sent(
    session: AsyncSession, *, worker_id: str, sent: Sequence[tuple[int, str]]
) -> None:
    """Record accepted messages with the Message-ID each went out with (so a bounce or a resend
    can be matched to its delivery): one row change a message, in the same statement."""
    if not sent:
        return
    now = utcnow()
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(
            _MARK_SENT_PG,
            {
                "ids": [i for i, _ in sent],
                "mids": [mid for _, mid in sent],
                "now": now,
                "worker": worker_id,
            },
        )
        return
    table = _delivery_table()  # Core, not ORM
    await session.execute(
        sa.update(table)
        .where(
            table.c.id == sa.bindparam("delivery_id"),
            table.c.leased_by == worker_id,
            table.c.status == DeliveryStatus.sending.value,
        )
        .values(
            status=DeliveryStatus.sent.value,
            sent_at=now,
            lease_until=None,
            attempts=table.c.attempts + 1,
            message_id=sa.bindparam("mid"),
        ),
        [{"delivery_id": i, "mid": mid} for i, mid in sent],
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
) -> bool:
    """False when the row is not this worker's any more: its outcome is not ours to record."""
    result = await session.execute(
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
    return bool(getattr(result, "rowcount", 0))


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
    # A reader who left the list meanwhile gets nothing: settle their rows now.
    left = select(Subscriber.id).where(col(Subscriber.status).in_(SUPPRESSED_STATUSES))
    await session.execute(
        sa.update(Delivery)
        .where(
            col(Delivery.id).in_(ids),
            col(Delivery.status) == DeliveryStatus.queued,
            col(Delivery.subscriber_id).in_(left),
        )
        .values(status=DeliveryStatus.skipped, last_error="the reader left the list")
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


async def check_held(
    session: AsyncSession, *, worker_id: str, ids: Sequence[int]
) -> tuple[set[int], set[int]]:
    """Of these claimed rows: (lost, left). `lost`: no longer this worker's (taken over after an
    expired lease, or settled by someone else): never send or record them. `left`: the reader
    has left the list (unsubscribed, bounced, complained) since the claim: the holder skips
    them. A worker hears of both at once through `signals`; this is the periodic check."""
    if not ids:
        return set(), set()
    rows = await session.execute(
        sa.select(
            col(Delivery.id), col(Delivery.status), col(Delivery.leased_by), col(Subscriber.status)
        )
        .select_from(Delivery)
        .outerjoin(Subscriber, col(Subscriber.id) == col(Delivery.subscriber_id))
        .where(col(Delivery.id).in_(ids))
    )
    lost: set[int] = set()
    left: set[int] = set()
    for delivery_id, status, leased_by, subscriber_status in rows.all():
        if status != DeliveryStatus.sending or leased_by != worker_id:
            lost.add(delivery_id)
        elif subscriber_status in SUPPRESSED_STATUSES:
            left.add(delivery_id)
    return lost, left


async def skip_subscriber_deliveries(
    session: AsyncSession, *, subscriber_id: int, why: str
) -> None:
    """Nothing more goes out to this subscriber (unsubscribe, bounce, erasure), from the commit
    on: queued rows (and rows of a worker that died) are skipped now; rows a live worker holds
    are settled by that worker, which hears of it at once (`signals`) and drops them, unless
    the message is already on the wire, in which case it is recorded `sent`, as it was."""
    now = utcnow()
    await session.execute(
        sa.update(Delivery)
        .where(
            col(Delivery.subscriber_id) == subscriber_id,
            or_(
                col(Delivery.status) == DeliveryStatus.queued,
                sa.and_(
                    col(Delivery.status) == DeliveryStatus.sending,
                    col(Delivery.lease_until) < now,
                ),
            ),
        )
        .values(status=DeliveryStatus.skipped, last_error=why[:2000], lease_until=None)
        .execution_options(synchronize_session=False)
    )
    await signals.publish(session, signals.revoke_signal(subscriber_id))
