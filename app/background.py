"""What a worker process runs besides requests: the sender and the rooms' periodic jobs (feed
polling, schedules).

The one place that wires the sender to the delivery kinds and starts the rooms' loops, used by
`newsletter worker` and by `newsletter serve` (which runs them inside the server unless
`--no-worker`).
"""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from app.articles.polling import poll_feeds_forever
from app.config import Settings
from app.kinds import delivery_kinds
from app.mail.transport import Mailer
from app.schedules.runner import Scheduler
from app.security import Tokens
from app.worker.sender import Sender


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
    """Send, poll and run the schedules until `stop` is set; each job finishes its work in
    hand, then returns."""
    sender = make_sender(settings, sessionmaker, mailer, tokens)
    scheduler = Scheduler(settings, sessionmaker, worker_id=sender.worker_id)
    await asyncio.gather(
        sender.run(stop),
        poll_feeds_forever(settings, sessionmaker, stop),
        scheduler.run(stop),
    )
