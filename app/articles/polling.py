"""The worker's periodic job for this room: poll the site's feed (FEED_URL every FEED_POLL_MINUTES).

A failed poll (unreachable, malformed) is logged and recorded on the Feed row; the loop goes
on and no article is ever deleted. ALERT_FEED_FAILURES failures in a row tell the editors
(app.alerts), once, until a poll succeeds again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from app.alerts import service as alerts
from app.articles import service
from app.articles.feeds import MalformedFeed
from app.config import Settings

log = logging.getLogger("app.articles.polling")


async def poll_feed_once(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], *, url: str
) -> service.ImportResult | None:
    """Poll `url` if no other worker did so recently; None when skipped or failed."""
    interval = timedelta(minutes=max(settings.feed_poll_minutes, 1))
    async with sessionmaker() as session:
        due = await service.claim_feed_poll(session, url=url, interval=interval)
        await session.commit()
    if not due:
        return None
    return await refresh_feed(settings, sessionmaker, url=url)


async def refresh_feed(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], *, url: str
) -> service.ImportResult | None:
    """Fetch and import `url` now (a conditional GET); None when it failed (logged, recorded)."""
    try:
        async with sessionmaker() as session:
            result = await service.import_feed_url(
                session,
                url=url,
                conditional=True,
                limits=service.FeedLimits.from_settings(settings),
            )
            await alerts.feed_recovered(session, url=url)
            await session.commit()
    except (service.FeedUnreachable, MalformedFeed) as exc:
        log.warning("feed poll failed: %s", exc, extra={"feed": url})
        async with sessionmaker() as session:
            failures = await service.record_feed_error(session, url=url, error=str(exc))
            await alerts.feed_failed(
                session, settings=settings, url=url, failures=failures, error=str(exc)
            )
            await session.commit()
        return None
    log.info("feed polled: %s", result.summary(), extra={"feed": url})
    if result.warning:
        log.warning("feed %s: recovered from a problem: %s", url, result.warning)
    return result


async def poll_feeds_forever(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], stop: asyncio.Event
) -> None:
    """Poll FEED_URL every FEED_POLL_MINUTES until `stop` is set; does nothing without both."""
    if not settings.feed_url:
        return
    if settings.feed_poll_minutes <= 0:
        log.info("FEED_URL is set but FEED_POLL_MINUTES is 0: the feed is not polled")
        return
    interval = settings.feed_poll_minutes * 60
    log.info("polling %s every %s minutes", settings.feed_url, settings.feed_poll_minutes)
    url = settings.feed_url
    while not stop.is_set():
        poll = asyncio.create_task(poll_feed_once(settings, sessionmaker, url=url))
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({poll, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not poll.done():
            # Shutting down: a slow fetch is abandoned; its transaction was never committed.
            poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poll
            return
        try:
            poll.result()
        except Exception:  # a bug or a database hiccup must not end the polling for good
            log.exception("feed poll crashed; trying again at the next interval")
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
        except TimeoutError:
            pass
