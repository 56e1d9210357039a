"""What `/healthz` and `/metrics` say about the service as a whole, read from the database (any
replica gives the same picture) plus one cached look at the SMTP relay.

- database: `SELECT 1`;
- relay: a connect + EHLO (+ AUTH) probe, cached for HEALTH_RELAY_PROBE_SECONDS, so a probe
  every second costs the relay one connection a minute, and concurrent requests share it;
- workers: each writes a heartbeat row every HEARTBEAT_SECONDS (app.background); unhealthy when
  workers ran and the freshest heartbeat is older than HEALTH_HEARTBEAT_MAX_AGE_SECONDS (none
  ever seen is fine: a `serve --no-worker` alone; the queue age then tells);
- queue: the oldest row that could go out now (due, and of no paused send) waited more than
  HEALTH_QUEUE_MAX_AGE_SECONDS.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from app.config import Settings
from app.mail.transport import Mailer, SendError
from app.models import (
    Delivery,
    DeliveryStatus,
    Digest,
    DigestStatus,
    WorkerHeartbeat,
    as_utc,
    utcnow,
)

HEARTBEAT_SECONDS = 10.0
# A worker gone for this long (crashed, its host lost) is forgotten.
FORGET_WORKERS_AFTER = timedelta(days=1)


# --- Heartbeats ------------------------------------------------------------------------------


async def beat(session: AsyncSession, *, worker_id: str) -> None:
    """Upsert this worker's heartbeat; forget long-gone workers."""
    now = utcnow()
    updated = await session.execute(
        sa.update(WorkerHeartbeat)
        .where(col(WorkerHeartbeat.worker_id) == worker_id)
        .values(seen_at=now)
        .execution_options(synchronize_session=False)
    )
    if not getattr(updated, "rowcount", 0):
        session.add(WorkerHeartbeat(worker_id=worker_id[:100], started_at=now, seen_at=now))
    await session.execute(
        sa.delete(WorkerHeartbeat).where(col(WorkerHeartbeat.seen_at) < now - FORGET_WORKERS_AFTER)
    )


async def heartbeat_forever(
    sessionmaker: async_sessionmaker[AsyncSession], *, worker_id: str, stop: asyncio.Event
) -> None:
    """Beat until `stop`; then remove the row (a worker that stopped cleanly is not missed)."""
    while not stop.is_set():
        try:
            async with sessionmaker() as session:
                await beat(session, worker_id=worker_id)
                await session.commit()
        except Exception:  # a database blip: the next beat tries again
            pass
        try:
            await asyncio.wait_for(stop.wait(), timeout=HEARTBEAT_SECONDS)
        except TimeoutError:
            pass
    try:
        async with sessionmaker() as session:
            await session.execute(
                sa.delete(WorkerHeartbeat).where(col(WorkerHeartbeat.worker_id) == worker_id)
            )
            await session.commit()
    except Exception:  # forgotten after FORGET_WORKERS_AFTER anyway
        pass


# --- Figures read from the database -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueFigures:
    oldest_due_seconds: float  # 0 when nothing waits
    heartbeats: dict[str, float]  # worker id -> seconds since its last beat


async def queue_figures(conn: AsyncConnection) -> QueueFigures:
    now = utcnow()
    paused = sa.select(col(Digest.id)).where(col(Digest.status) != DigestStatus.sending)
    oldest = (
        await conn.execute(
            sa.select(sa.func.min(col(Delivery.next_attempt_at))).where(
                col(Delivery.status) == DeliveryStatus.queued,
                col(Delivery.next_attempt_at) <= now,
                sa.or_(col(Delivery.digest_id).is_(None), col(Delivery.digest_id).not_in(paused)),
            )
        )
    ).scalar_one()
    beats = (
        await conn.execute(sa.select(col(WorkerHeartbeat.worker_id), col(WorkerHeartbeat.seen_at)))
    ).all()
    return QueueFigures(
        oldest_due_seconds=_age(now, oldest),
        heartbeats={worker: _age(now, seen) for worker, seen in beats},
    )


def _age(now: datetime, then: datetime | None) -> float:
    return 0.0 if then is None else max(0.0, (now - as_utc(then)).total_seconds())


# --- The relay probe --------------------------------------------------------------------------


class RelayProbe:
    """One connect + EHLO at most every `every` seconds; requests meanwhile get the last answer."""

    def __init__(self, mailer: Mailer, *, every: float) -> None:
        self.mailer = mailer
        self.every = every
        self._at = -float("inf")
        self._error: str | None = None
        self._lock = asyncio.Lock()

    async def check(self) -> str | None:
        """None when the relay answered; else what went wrong."""
        async with self._lock:
            if time.monotonic() - self._at < self.every:
                return self._error
            try:
                connection = await self.mailer.connect()
                await connection.close()
                self._error = None
            except SendError as exc:
                self._error = exc.reply[:300]
            except Exception as exc:  # any failure is an answer, never a 500
                self._error = f"{exc.__class__.__name__}: {exc}"[:300]
            self._at = time.monotonic()
            return self._error


# --- The verdict ------------------------------------------------------------------------------


async def check_health(
    engine: AsyncEngine, settings: Settings, probe: RelayProbe
) -> tuple[bool, dict[str, Any]]:
    """(healthy, the JSON body): each check says "ok" or what is wrong."""
    checks: dict[str, Any] = {}
    problems: list[str] = []
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
            figures = await queue_figures(conn)
        checks["database"] = "ok"
    except Exception as exc:  # the one check the others need
        checks["database"] = str(exc)[:200]
        body = {"status": "error", "problems": ["database"], "checks": checks}
        return False, {**body, "database": checks["database"]}

    relay_error = await probe.check() if settings.uses_smtp else None
    checks["relay"] = "ok" if settings.uses_smtp and relay_error is None else relay_error
    if not settings.uses_smtp:
        checks["relay"] = "ok (Maildir, no relay)"
    elif relay_error is not None:
        problems.append("relay")

    max_beat = settings.health_heartbeat_max_age_seconds
    freshest = min(figures.heartbeats.values(), default=None)
    checks["workers"] = {
        "running": sum(1 for age in figures.heartbeats.values() if age <= max_beat),
        "freshest_heartbeat_seconds": None if freshest is None else round(freshest, 1),
    }
    if freshest is not None and freshest > max_beat:
        problems.append("workers")

    checks["queue"] = {"oldest_due_seconds": round(figures.oldest_due_seconds, 1)}
    if figures.oldest_due_seconds > settings.health_queue_max_age_seconds:
        problems.append("queue")

    healthy = not problems
    status = "ok" if healthy else "error"
    return healthy, {"status": status, "database": "ok", "problems": problems, "checks": checks}
