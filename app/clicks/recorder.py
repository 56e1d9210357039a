"""Clicks counted off the request path: the redirect appends, a task classifies and writes.

The redirect only appends to a list (no await, no database), so a reader's click is answered at
once. Each copy's clicks are held BURST_SECONDS after its first one, so that a scanner's burst is
seen whole before anything is counted; then a flush classifies them (app.clicks.scanners) and
writes every counter of the batch in one transaction. On shutdown the lifespan stops the task,
which flushes everything still held, burst window or not: nothing is lost.

Limit: each process holds its own clicks, so with several replicas a scanner's burst split
across them by the load balancer is judged per replica (the delivery-time rule still applies).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app import metrics
from app.clicks import scanners
from app.clicks.service import Click, LinkCache, delivery_facts, group_by_delivery, record_clicks
from app.config import Settings
from app.models import Digest, utcnow
from app.security import OPEN_POSITION, Tokens

log = logging.getLogger("app.clicks")

# Small, frequent flushes: each one's Python work runs on the event loop that answers clicks, so
# at 1,000 clicks/s a flush every 0.1 s (about 100 clicks) keeps those pauses to milliseconds.
FLUSH_SECONDS = 0.1


class ClickRecorder:
    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        tokens: Tokens,
        links: LinkCache,
        *,
        clock: Callable[[], datetime] = utcnow,
        hold_seconds: float = scanners.BURST_SECONDS,
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.tokens = tokens
        self.links = links
        self.clock = clock
        self.hold_seconds = hold_seconds
        self._held: list[Click] = []
        self._lock = asyncio.Lock()

    def add(self, click: Click) -> None:
        """The redirect's part: O(1), never waits."""
        self._held.append(click)

    @property
    def held(self) -> int:
        return len(self._held)

    def _take(self, *, everything: bool) -> list[Click]:
        if everything:
            taken, self._held = self._held, []
            return taken
        now = self.clock()
        firsts: dict[int, datetime] = {}
        for click in self._held:
            firsts.setdefault(click.delivery_id, click.at)
        ripe = {d for d, at in firsts.items() if (now - at).total_seconds() >= self.hold_seconds}
        taken = [c for c in self._held if c.delivery_id in ripe]
        self._held = [c for c in self._held if c.delivery_id not in ripe]
        return taken

    async def flush(self, *, everything: bool = False) -> int:
        """Classify and write the clicks whose burst window closed (all of them on shutdown)."""
        async with self._lock:
            clicks = self._take(everything=everything)
            if not clicks:
                return 0
            try:
                try:
                    await self._write(clicks)
                except sa.exc.IntegrityError:
                    # A digest deleted since its click was answered: those clicks can never be
                    # written, and must not hold back the others.
                    clicks = await self._of_existing_digests(clicks)
                    await self._write(clicks)
            except BaseException:
                self._held[:0] = clicks  # not counted yet: kept for the next flush
                raise
            return len(clicks)

    async def _of_existing_digests(self, clicks: list[Click]) -> list[Click]:
        async with self.sessionmaker() as session:
            ids = set(
                (
                    await session.exec(
                        select(Digest.id).where(col(Digest.id).in_({c.digest_id for c in clicks}))
                    )
                ).all()
            )
        kept = [c for c in clicks if c.digest_id in ids]
        if len(kept) < len(clicks):
            log.warning("%d clicks of deleted digests dropped", len(clicks) - len(kept))
        return kept

    async def _write(self, clicks: list[Click]) -> None:
        async with self.sessionmaker() as session:
            facts = await delivery_facts(session, ids=(c.delivery_id for c in clicks))
            readers: list[Click] = []
            machines: list[Click] = []
            urls: dict[int, dict[int, str]] = {}
            for delivery_id, group in group_by_delivery(clicks).items():
                digest_id = group[0].digest_id
                known = self.links.known(digest_id)
                urls[digest_id] = (
                    known if known is not None else await self.links.load(session, digest_id)
                )
                sent_at = facts.get(delivery_id, (None, None))[1]
                timed = [
                    scanners.TimedClick(c.position, c.at)
                    for c in group
                    if c.machine is None and c.position != OPEN_POSITION
                ]
                burst = scanners.burst_positions(timed, link_count=len(urls[digest_id]))
                for click in group:
                    if click.position == OPEN_POSITION:
                        readers.append(click)  # an open: no rule tells Apple MPP from a reader
                    elif click.machine or burst or scanners.too_soon(click.at, sent_at):
                        machines.append(click)
                    else:
                        readers.append(click)
            await record_clicks(
                session,
                tokens=self.tokens,
                mode=self.settings.track_clicks,
                readers=readers,
                machines=machines,
                urls=urls,
                subscribers={d: s for d, (s, _) in facts.items()},
            )
            await session.commit()
        metrics.count_clicks(readers=len(readers), machines=len(machines))

    async def run(self, stop: asyncio.Event) -> None:
        """Flush every FLUSH_SECONDS until `stop`; then flush everything held."""
        while not stop.is_set():
            started = time.monotonic()
            try:
                await asyncio.wait_for(stop.wait(), timeout=FLUSH_SECONDS)
            except TimeoutError:
                pass
            if stop.is_set():
                break
            try:
                await self.flush()
            except Exception:
                log.warning("could not count clicks yet (kept for the next flush)", exc_info=True)
                await asyncio.sleep(max(0.0, FLUSH_SECONDS - (time.monotonic() - started)))
        try:
            await self.flush(everything=True)
        except Exception:
            log.exception("clicks not counted at shutdown: %s", self.held)
