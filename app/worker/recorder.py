"""Outcomes of the messages a worker sends, written in small groups off the SMTP lanes.

Lanes only append and, when a group is full, wake the flusher: they never wait on the database,
so an SMTP connection is never idle while a commit is in flight. One recorder lives as long as
its worker: what a failed commit could not record is kept for the next flush.

Crash safety: a message is recorded `sent` within RECORD_GROUP messages or RECORD_DELAY of the
server's 250; a worker killed in between leaves those rows `sending` under a lease, and the next
worker re-sends them after the lease expires (same Message-ID, so the duplicate is recognisable).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from app.outbox import queue as outbox
from app.outbox import tally
from app.outbox.kinds import Outgoing

log = logging.getLogger("app.worker")

RECORD_GROUP = 10  # messages: at most this many accepted-but-unrecorded per worker
RECORD_DELAY = 0.05  # seconds: and never older than this
# Outcome counters (app.outbox.tally) are figures, not the outcomes: written with the outcomes
# at most this often, at the end of each batch and before a breaker reads them, so that they
# cost the hot path a few statements a second, not one per group. A crash loses at most this
# much of them; another worker's breaker sees this worker's deliveries this late at most.
TALLY_SECONDS = 0.25
LEFT_REASON = "the reader left the list"


class Recorder:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], worker_id: str) -> None:
        self.sessionmaker = sessionmaker
        self.worker_id = worker_id
        self._sent: list[tuple[int, str]] = []  # (delivery id, Message-ID)
        self._left: list[int] = []
        # Outcome counters of sends (app.outbox.tally), written with the outcomes.
        self._counts: defaultdict[tally.TallyKey, dict[str, int]] = defaultdict(dict)
        self._counted_at = time.monotonic()
        self._full = asyncio.Event()
        self._lock = asyncio.Lock()

    def sent(self, item: Outgoing) -> None:
        self._sent.append((item.delivery.id, item.message_id))
        if len(self._sent) >= RECORD_GROUP:
            self._full.set()

    def left(self, delivery_id: int) -> None:
        """A held row not sent because its reader left the list meanwhile."""
        self._left.append(delivery_id)

    def count(self, item: Outgoing, outcome: str) -> None:
        """One more `outcome` (delivered, deferred, bounced) for the item's send and domain."""
        delivery = item.delivery
        if delivery.digest_id is None:
            return  # not part of a send (a confirmation email)
        key = (delivery.kind, delivery.digest_id, tally.domain_of(item.recipient))
        counts = self._counts[key]
        counts[outcome] = counts.get(outcome, 0) + 1

    async def flush(self, *, counters: bool = False) -> None:
        """Record what is pending; the outcome counters too when `counters` (end of a batch) or
        TALLY_SECONDS after they were last written."""
        async with self._lock:
            now = time.monotonic()
            counters = bool(self._counts) and (counters or now - self._counted_at >= TALLY_SECONDS)
            if not self._sent and not self._left and not counters:
                return
            sent, self._sent = self._sent, []
            left, self._left = self._left, []
            counts: defaultdict[tally.TallyKey, dict[str, int]] = defaultdict(dict)
            if counters:
                counts, self._counts = self._counts, counts
                self._counted_at = now
            self._full.clear()
            try:
                async with self.sessionmaker() as session:
                    await outbox.mark_sent(session, worker_id=self.worker_id, sent=sent)
                    await outbox.mark_skipped(
                        session, worker_id=self.worker_id, ids=left, reason=LEFT_REASON
                    )
                    await tally.add(session, counts)
                    await session.commit()
            except BaseException:
                # Not recorded yet: keep them for the next flush.
                self._sent[:0] = sent
                self._left[:0] = left
                for key, added in counts.items():
                    mine = self._counts[key]
                    for outcome, n in added.items():
                        mine[outcome] = mine.get(outcome, 0) + n
                raise

    async def run(self, stop: asyncio.Event) -> None:
        """Flush whenever a group is full, and at least every RECORD_DELAY, until `stop`."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(self._full.wait(), timeout=RECORD_DELAY)
            except TimeoutError:
                pass
            try:
                await self.flush()
            except Exception:  # kept for the next flush; the lease covers a longer outage
                log.warning("could not record sent messages yet", exc_info=True)
                await asyncio.sleep(RECORD_DELAY)
