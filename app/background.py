"""What a worker process runs besides requests: the sender, the rooms' periodic jobs (feed
polling, schedules, telling alert incidents) and the heartbeat /healthz reads.

The one place that wires the sender to the delivery kinds and starts the rooms' loops, used by
`newsletter worker` and by `newsletter serve` (which runs them inside the server unless
`--no-worker`).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from app.alerts import service as alerts
from app.alerts.telling import tell_incidents_forever
from app.articles.polling import poll_feeds_forever
from app.config import Settings
from app.digests.service import RATE_WINDOW_SECONDS
from app.digests.tally import fold_tallies
from app.health import heartbeat_forever
from app.kinds import delivery_kinds
from app.mail.transport import Mailer
from app.models import utcnow
from app.retention import RETENTION_INTERVAL, run_retention
from app.schedules.runner import Scheduler
from app.security import Tokens
from app.worker.sender import Sender

log = logging.getLogger("app.worker")
FOLD_INTERVAL = 2.0  # seconds between folds of the digests' tallies
FOLD_LAG_SECONDS = 2.0  # rows younger than this are left for the next fold
RETENTION_FIRST_DELAY = 10.0  # seconds after start before the first retention pass


def make_sender(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    mailer: Mailer,
    tokens: Tokens,
    *,
    worker_id: str | None = None,
) -> Sender:
    return Sender(
        settings, sessionmaker, mailer, delivery_kinds(settings, tokens), worker_id=worker_id
    )


async def run_background(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    mailer: Mailer,
    tokens: Tokens,
    stop: asyncio.Event,
) -> None:
    """Send, poll, run the schedules, tell incidents and beat until `stop` is set; each job
    finishes its work in hand, then returns."""
    sender = make_sender(settings, sessionmaker, mailer, tokens)
    scheduler = Scheduler(settings, sessionmaker, worker_id=sender.worker_id)
    try:
        async with sessionmaker() as session:
            await alerts.setup_working(session)  # this sender's setup loaded (DKIM included)
            await session.commit()
    except Exception:  # the database is down: the sender waits for it anyway
        pass
    await asyncio.gather(
        sender.run(stop),
        poll_feeds_forever(settings, sessionmaker, stop),
        scheduler.run(stop),
        housekeep_forever(settings, sessionmaker, stop),
        tell_incidents_forever(settings, sessionmaker, stop),
        heartbeat_forever(sessionmaker, worker_id=sender.worker_id, stop=stop),
    )


async def housekeep_forever(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], stop: asyncio.Event
) -> None:
    """Fold the digests' tallies every FOLD_INTERVAL (the rate window's rows to one per second,
    older ones to one per digest and status), and apply DELIVERY_RETENTION_DAYS every
    RETENTION_INTERVAL, until `stop`. A failure is logged and tried again next time: nothing
    here is urgent."""
    loop = asyncio.get_running_loop()
    next_retention = loop.time() + RETENTION_FIRST_DELAY  # not at start-up: a deploy is busy
    while not stop.is_set():
        try:
            async with sessionmaker() as session:
                now = utcnow()
                await fold_tallies(
                    session,
                    before=now - timedelta(seconds=FOLD_LAG_SECONDS),
                    seconds_from=now - timedelta(seconds=RATE_WINDOW_SECONDS),
                )
                await session.commit()
            if loop.time() >= next_retention:
                next_retention = loop.time() + RETENTION_INTERVAL
                result = await run_retention(sessionmaker, days=settings.delivery_retention_days)
                if result.deliveries or result.history or result.click_tags:
                    log.info(
                        "retention: %d delivery rows of %d digests and confirmations, "
                        "%d history entries, %d counted-click tags deleted",
                        result.deliveries,
                        result.digests,
                        result.history,
                        result.click_tags,
                    )
        except Exception:
            log.warning("housekeeping failed; trying again later", exc_info=True)
        try:
            await asyncio.wait_for(stop.wait(), timeout=FOLD_INTERVAL)
        except TimeoutError:
            pass
