"""The sender: claim batches from the outbox, compose, deliver over a few reused SMTP
connections, and record each outcome in small groups right after the server answers.

Flow of one worker:

    claim batch N+1 (lease) ──┐   while   ┌── lanes (SEND_CONCURRENCY connections) send batch N
                              └──────────>┘   recorder writes outcomes every few ms / messages

Crash safety: a message is recorded `sent` within RECORD_GROUP messages or RECORD_DELAY of the
server's 250; a worker killed in between leaves those rows `sending` with a lease, and the next
worker re-sends them after the lease expires (same Message-ID, so the duplicate is recognisable).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from aiolimiter import AsyncLimiter
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from app import metrics
from app.bounces.service import apply_bounce
from app.config import Settings
from app.digests.delivery import RenderCache, compose_digest_delivery
from app.digests.service import finish_completed_digests, halted_digests, pause_digest
from app.mail.compose import Recipient, compose_confirmation, list_id_header
from app.mail.dkim import DkimSigner
from app.mail.transport import Connection, Mailer, SendError
from app.mail.verp import verp_sender
from app.models import (
    BounceType,
    DeliveryKind,
    Subscriber,
    SubscriberStatus,
    utcnow,
)
from app.security import Tokens
from app.worker import outbox
from app.worker.outbox import Claimed

log = logging.getLogger("app.worker")

RECORD_GROUP = 10  # messages: at most this many accepted-but-unrecorded per worker
RECORD_DELAY = 0.05  # seconds: and never older than this
DIGEST_WATCH_SECONDS = 0.5  # how soon a pause or cancel stops the messages already in hand


@dataclass(slots=True)
class Outgoing:
    delivery: Claimed
    recipient: str
    sender: str
    message: bytes
    message_id: str
    wire_ready: bool = False  # see MessageTemplate: sent without rescanning


@dataclass(slots=True)
class BatchReport:
    claimed: int = 0
    sent: int = 0
    skipped: int = 0
    retried: int = 0
    failed: int = 0
    released: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, other: BatchReport) -> None:
        self.claimed += other.claimed
        self.sent += other.sent
        self.skipped += other.skipped
        self.retried += other.retried
        self.failed += other.failed
        self.released += other.released
        self.errors += other.errors


@dataclass(slots=True)
class _Batch:
    claimed: list[Claimed]
    outgoing: list[Outgoing]
    skipped: list[int]


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Recorder:
    """Buffers outcomes; one flusher task writes them in a short transaction per small group.

    Lanes only append and, when a group is full, wake the flusher: they never wait on the
    database, so an SMTP connection is never idle while a commit is in flight. One recorder
    lives as long as its worker: what a failed commit could not record is kept for the next.
    """

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], worker_id: str) -> None:
        self.sessionmaker = sessionmaker
        self.worker_id = worker_id
        self._sent: list[int] = []
        self._full = asyncio.Event()
        self._lock = asyncio.Lock()

    def sent(self, item: Outgoing, report: BatchReport) -> None:
        self._sent.append(item.delivery.id)
        report.sent += 1
        if len(self._sent) >= RECORD_GROUP:
            self._full.set()

    async def flush(self) -> None:
        async with self._lock:
            if not self._sent:
                return
            sent, self._sent = self._sent, []
            self._full.clear()
            try:
                async with self.sessionmaker() as session:
                    await outbox.mark_sent(session, worker_id=self.worker_id, ids=sent)
                    await session.commit()
            except BaseException:
                self._sent[:0] = sent  # not recorded yet: keep them for the next flush
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


class Sender:
    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        mailer: Mailer,
        tokens: Tokens,
        *,
        worker_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.mailer = mailer
        self.tokens = tokens
        self.worker_id = worker_id or default_worker_id()
        self.limiter = _limiter(settings.send_rate_per_second)
        # Built once: a half-configured DKIM setup fails here, at start, with a clear message.
        self.signer = DkimSigner.from_settings(settings)
        self._idle: list[tuple[Connection, int]] = []  # open connections and messages sent on each
        self._setup_errors = 0  # consecutive permanent errors that blame our setup, not a reader
        self._relay_down_until = 0.0
        self._relay_failures = 0
        self._stopping = asyncio.Event()
        # Digests this worker paused (broken setup), with when: their rows already in hand are
        # released, not sent. Only the database can resume them: a claim that started after
        # the pause and still returns rows of the digest proves it is `sending` again.
        self._paused_digests: dict[int, float] = {}
        self._renders = RenderCache()
        self._recorder = Recorder(sessionmaker, self.worker_id)
        # Held rows that are no longer ours to send (the reader left, a bounce, a takeover).
        self._revoked: set[int] = set()

    # --- The loop ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Send until `stop` is set; then finish the messages in flight, release the rest."""
        self._stopping = stop
        log.info("worker %s sending through %s", self.worker_id, self.mailer.description)
        prefetch: asyncio.Task[_Batch] | None = None
        try:
            while not stop.is_set():
                wait = self._relay_down_until - time.monotonic()
                if wait > 0:
                    await _sleep_unless(stop, wait)
                    continue
                try:
                    batch = await (prefetch or self._claim_and_compose())
                    prefetch = None
                    if not batch.claimed:
                        await self._close_idle()
                        await _sleep_unless(stop, self.settings.worker_poll_seconds)
                        continue
                    # Claim the next batch while this one is on the wire.
                    prefetch = asyncio.create_task(self._claim_and_compose())
                    await self._deliver(batch)
                except Exception:  # the loop must outlive any one bad batch or database blip
                    log.exception("batch failed; retrying after a pause")
                    await _sleep_unless(stop, max(1.0, self.settings.worker_poll_seconds))
        finally:
            if prefetch is not None:
                try:
                    leftover = await prefetch
                    await self._release([o.delivery.id for o in leftover.outgoing], reason=None)
                except Exception:
                    log.exception("could not release the prefetched batch; its lease will expire")
            await self._close_idle()
            try:
                await self._recorder.flush()
            except Exception:
                log.exception("could not record the last sent messages; they may be resent")
            log.info("worker %s stopped", self.worker_id)

    async def run_batch(self) -> BatchReport:
        """Claim, compose and deliver one batch (tests and one-shot tools)."""
        batch = await self._claim_and_compose()
        if not batch.claimed:
            await self._close_idle()
            return BatchReport()
        return await self._deliver(batch)

    # --- Claim and compose ------------------------------------------------------------------

    async def _claim_and_compose(self) -> _Batch:
        claim_started = time.monotonic()
        async with self.sessionmaker() as session:
            claimed = await outbox.claim_batch(
                session,
                worker_id=self.worker_id,
                limit=self.settings.send_batch_size,
                lease_seconds=self.settings.send_lease_seconds,
            )
            await session.commit()
        if not claimed:
            return _Batch([], [], [])
        for digest_id in {c.digest_id for c in claimed if c.digest_id is not None}:
            if self._paused_digests.get(digest_id, claim_started) < claim_started:
                del self._paused_digests[digest_id]  # resumed since this worker paused it
        async with self.sessionmaker() as session:
            outgoing, skipped, broken = await self._compose(session, claimed)
            if self.signer is not None and outgoing:
                # RSA in pure Python: off the event loop so the lanes keep talking SMTP.
                await asyncio.to_thread(_sign_all, self.signer, outgoing)
            await outbox.mark_skipped(
                session, worker_id=self.worker_id, ids=skipped, reason="subscriber not eligible"
            )
            await outbox.set_message_ids(
                session,
                pairs=[
                    (o.delivery.id, o.message_id)
                    for o in outgoing
                    if o.delivery.message_id != o.message_id
                ],
            )
            for delivery, reason in broken:
                # Retried with backoff like a temporary SMTP error, failed after the last attempt.
                await self._retry_or_fail(session, delivery, reason)
            await session.commit()
        return _Batch(claimed, outgoing, skipped)

    async def _compose(
        self, session: AsyncSession, claimed: Sequence[Claimed]
    ) -> tuple[list[Outgoing], list[int], list[tuple[Claimed, str]]]:
        subscriber_ids = {c.subscriber_id for c in claimed if c.subscriber_id is not None}
        rows = (
            await session.execute(
                sa.select(
                    col(Subscriber.id),
                    col(Subscriber.email),
                    col(Subscriber.name),
                    col(Subscriber.language),
                    col(Subscriber.status),
                    col(Subscriber.email_hash),
                ).where(col(Subscriber.id).in_(subscriber_ids))
            )
        ).all()
        recipients = {row[0]: Recipient(*row) for row in rows}
        outgoing: list[Outgoing] = []
        skipped: list[int] = []
        broken: list[tuple[Claimed, str]] = []
        list_id = list_id_header(self.settings)
        for delivery in claimed:
            recipient = recipients.get(delivery.subscriber_id or -1)
            try:
                item = await self._compose_one(session, delivery, recipient, list_id)
            except Exception as exc:  # one bad delivery must not sink the batch
                log.exception("delivery %s could not be composed", delivery.id)
                broken.append((delivery, f"compose: {exc.__class__.__name__}: {exc}"))
                continue
            if item is None:
                skipped.append(delivery.id)
            else:
                outgoing.append(item)
        return outgoing, skipped, broken

    async def _compose_one(
        self,
        session: AsyncSession,
        delivery: Claimed,
        recipient: Recipient | None,
        list_id: str,
    ) -> Outgoing | None:
        """The message for one delivery, or None when its reader is no longer eligible."""
        sender = verp_sender(self.settings, delivery.id)
        if delivery.kind == DeliveryKind.confirmation:
            # Only a reader still waiting to confirm gets the link; one who confirmed,
            # left or bounced meanwhile gets nothing.
            if recipient is None or recipient.email is None:
                return None
            if recipient.status != SubscriberStatus.pending:
                return None
            message, message_id = compose_confirmation(
                self.settings, self.tokens, delivery_id=delivery.id, recipient=recipient
            )
            return Outgoing(delivery, recipient.email, sender, message, message_id)
        if delivery.kind in (DeliveryKind.digest, DeliveryKind.test):
            # A subscriber who is not (or no longer) confirmed is skipped.
            composed = await compose_digest_delivery(
                session,
                settings=self.settings,
                tokens=self.tokens,
                delivery=delivery,
                recipient=recipient,
                renders=self._renders,
                list_id=list_id,
            )
            if composed is None:
                return None
            return Outgoing(
                delivery,
                composed.to,
                sender,
                composed.message,
                composed.message_id,
                wire_ready=composed.wire_ready,
            )
        log.warning("delivery %s: unknown kind %r, skipped", delivery.id, delivery.kind)
        return None

    # --- Deliver ----------------------------------------------------------------------------

    async def _deliver(self, batch: _Batch) -> BatchReport:
        started = time.perf_counter()
        report = BatchReport(claimed=len(batch.claimed), skipped=len(batch.skipped))
        recorder = self._recorder
        pending = deque(batch.outgoing)
        unsent: list[int] = []
        lanes = min(self.settings.send_concurrency, len(pending))
        done = asyncio.Event()
        ticker = asyncio.create_task(recorder.run(done))
        watcher = asyncio.create_task(self._watch(batch, done))
        try:
            await asyncio.gather(
                *(self._lane(pending, recorder, report, unsent) for _ in range(lanes))
            )
        finally:
            done.set()
            await ticker
            await watcher
            try:
                await recorder.flush()
            except Exception:  # kept by the recorder; the next batch's flusher tries again
                log.warning("could not record this batch's sent messages yet", exc_info=True)
            unsent.extend(item.delivery.id for item in pending)
            if unsent:
                try:
                    await self._release(unsent, reason=None)
                    report.released += len(unsent)
                except Exception:  # their lease runs out and another claim takes them
                    log.warning("could not give unsent messages back", exc_info=True)
            self._revoked.difference_update(c.id for c in batch.claimed)
        if any(c.digest_id for c in batch.claimed):
            await _finish_completed_digests(self.sessionmaker)
        log.info(
            "batch sent",
            extra={
                "worker": self.worker_id,
                "digests": sorted({c.digest_id for c in batch.claimed if c.digest_id}),
                "count": report.claimed,
                "sent": report.sent,
                "skipped": report.skipped,
                "retried": report.retried,
                "failed": report.failed,
                "released": report.released,
                "duration_ms": round((time.perf_counter() - started) * 1000),
                "errors": report.errors[:3],
            },
        )
        return report

    async def _watch(self, batch: _Batch, done: asyncio.Event) -> None:
        """While a batch is on the wire, twice a second: an editor's pause or cancel stops the
        rows this worker holds (released; a cancelled digest's become skipped), and rows that
        stopped being ours (the reader left or bounced) are dropped. Every third of a lease,
        the leases of everything this worker holds (the prefetched batch too) are renewed, so
        a slow batch is never taken over while it is still being sent."""
        digest_ids = {c.digest_id for c in batch.claimed if c.digest_id is not None}
        held = [o.delivery.id for o in batch.outgoing]
        renew_every = max(DIGEST_WATCH_SECONDS, self.settings.send_lease_seconds / 3)
        renewed = time.monotonic()
        while not done.is_set():
            await _sleep_unless(done, DIGEST_WATCH_SECONDS)
            if done.is_set():
                return
            try:
                async with self.sessionmaker() as session:
                    halted = await halted_digests(session, digest_ids=digest_ids)
                    self._revoked.update(
                        await outbox.no_longer_held(session, worker_id=self.worker_id, ids=held)
                    )
                    if time.monotonic() - renewed >= renew_every:
                        await outbox.renew_leases(
                            session,
                            worker_id=self.worker_id,
                            lease_seconds=self.settings.send_lease_seconds,
                        )
                        await session.commit()
                        renewed = time.monotonic()
            except Exception:  # a database blip: the next look covers it
                log.warning("could not check the batch's status", exc_info=True)
                continue
            now = time.monotonic()
            for digest_id in halted:
                self._paused_digests.setdefault(digest_id, now)

    async def _lane(
        self, pending: deque[Outgoing], recorder: Recorder, report: BatchReport, unsent: list[int]
    ) -> None:
        connection: Connection | None = None
        used = 0
        try:
            while pending:
                if self._stopping.is_set() or time.monotonic() < self._relay_down_until:
                    return  # what is left in `pending` is released by _deliver
                item = pending.popleft()
                if item.delivery.id in self._revoked:
                    continue  # skipped meanwhile (unsubscribe, bounce, erasure): not ours now
                if item.delivery.digest_id in self._paused_digests:
                    unsent.append(item.delivery.id)
                    continue
                if connection is None:
                    try:
                        connection, used = await self._connection()
                    except SendError as exc:
                        await self._connect_failed(item, exc, report)
                        continue
                if self.limiter is not None:
                    await self.limiter.acquire()
                send_started = time.perf_counter()
                try:
                    await connection.send(
                        item.message,
                        sender=item.sender,
                        recipient=item.recipient,
                        wire_ready=item.wire_ready,
                    )
                    metrics.observe_send(time.perf_counter() - send_started)
                except SendError as exc:
                    if not exc.recipient or not exc.permanent:
                        # The connection may be in any state after a fault: start afresh.
                        await connection.close()
                        connection = None
                    await self._send_failed(item, exc, report)
                    continue
                self._setup_errors = 0
                self._relay_failures = 0
                used += 1
                recorder.sent(item, report)
                if used >= self.settings.smtp_messages_per_connection:
                    await connection.close()
                    connection = None
        finally:
            if connection is not None:
                self._idle.append((connection, used))

    async def _connection(self) -> tuple[Connection, int]:
        if self._idle:
            return self._idle.pop()
        return await self.mailer.connect(), 0

    async def _close_idle(self) -> None:
        idle, self._idle = self._idle, []
        for connection, _ in idle:
            await connection.close()

    # --- Outcomes ---------------------------------------------------------------------------

    async def _connect_failed(self, item: Outgoing, exc: SendError, report: BatchReport) -> None:
        """No session with the relay: nobody's mail was tried, so no attempt is counted."""
        report.errors.append(exc.reply)
        if exc.permanent:  # e.g. authentication refused: our setup, not the relay's health
            await self._setup_error(item, exc, report)
            return
        self._relay_failures += 1
        delay = outbox.backoff_seconds(
            self._relay_failures,
            base=min(5.0, self.settings.send_retry_base_seconds),
            cap=min(60.0, self.settings.send_retry_max_seconds),
        )
        self._relay_down_until = time.monotonic() + delay
        log.warning("SMTP relay unreachable (%s); pausing %.1fs", exc.reply, delay)
        await self._release(
            [item.delivery.id], reason=exc.reply, retry_at=utcnow() + timedelta(seconds=delay)
        )
        report.released += 1

    async def _send_failed(self, item: Outgoing, exc: SendError, report: BatchReport) -> None:
        report.errors.append(exc.reply)
        if exc.permanent and not exc.recipient and exc.stage != "rcpt":
            await self._setup_error(item, exc, report)
            return
        async with self.sessionmaker() as session:
            if exc.permanent and not exc.recipient:
                # A policy refusal of one recipient (5.7.x): maybe that domain blocks us, maybe
                # our relay refuses everyone. Counted against this delivery (failed after the
                # last attempt, never a bounce) and toward pausing the digest.
                if await self._retry_or_fail(session, item.delivery, exc.reply):
                    report.retried += 1
                else:
                    report.failed += 1
                await session.commit()
                self._setup_errors += 1
                await self._pause_if_setup_broken(item, exc)
                return
            if exc.permanent:
                # 5xx on the recipient (550 no such user...): a hard bounce, never retried.
                await outbox.mark_failed(
                    session, worker_id=self.worker_id, delivery_id=item.delivery.id, reply=exc.reply
                )
                await mark_bounced(session, item.delivery.subscriber_id, exc.reply)
                report.failed += 1
            elif await self._retry_or_fail(session, item.delivery, exc.reply):
                report.retried += 1
            else:
                report.failed += 1
            await session.commit()

    async def _retry_or_fail(self, session: AsyncSession, delivery: Claimed, reply: str) -> bool:
        """Back to the queue after a jittered backoff (True), or failed for good once
        SEND_MAX_ATTEMPTS is reached (False), with the last reply kept."""
        attempts = delivery.attempts + 1
        if attempts >= self.settings.send_max_attempts:
            await outbox.mark_failed(
                session, worker_id=self.worker_id, delivery_id=delivery.id, reply=reply
            )
            return False
        delay = outbox.backoff_seconds(
            attempts,
            base=self.settings.send_retry_base_seconds,
            cap=self.settings.send_retry_max_seconds,
        )
        await outbox.mark_retry(
            session,
            worker_id=self.worker_id,
            delivery_id=delivery.id,
            reply=reply,
            retry_at=utcnow() + timedelta(seconds=delay),
        )
        return True

    async def _setup_error(self, item: Outgoing, exc: SendError, report: BatchReport) -> None:
        """A permanent error that blames our setup (credentials, sender, relay policy): the
        delivery goes back to the queue untouched; past a threshold the digest is paused."""
        self._setup_errors += 1
        delay = outbox.backoff_seconds(
            self._setup_errors,
            base=min(1.0, self.settings.send_retry_base_seconds),
            cap=self.settings.send_retry_max_seconds,
        )
        await self._release(
            [item.delivery.id], reason=exc.reply, retry_at=utcnow() + timedelta(seconds=delay)
        )
        report.released += 1
        await self._pause_if_setup_broken(item, exc)

    async def _pause_if_setup_broken(self, item: Outgoing, exc: SendError) -> None:
        """Past SEND_PAUSE_AFTER_PERMANENT_ERRORS in a row, the digest is paused with the reason."""
        digest_id = item.delivery.digest_id
        if self._setup_errors >= self.settings.send_pause_after_permanent_errors and digest_id:
            reason = (
                f"paused after {self._setup_errors} consecutive permanent SMTP errors "
                f"that point at the sending setup; last reply: {exc.reply}"
            )
            async with self.sessionmaker() as session:
                paused = await pause_digest(session, digest_id=digest_id, reason=reason)
                await session.commit()
            self._paused_digests[digest_id] = time.monotonic()
            if paused:
                log.error("digest %s paused: %s", digest_id, reason)

    async def _release(
        self, ids: list[int], *, reason: str | None, retry_at: datetime | None = None
    ) -> None:
        async with self.sessionmaker() as session:
            await outbox.release(
                session, worker_id=self.worker_id, ids=ids, retry_at=retry_at, reason=reason
            )
            await session.commit()


def _sign_all(signer: DkimSigner, outgoing: list[Outgoing]) -> None:
    for item in outgoing:
        item.message = signer.sign(item.message)


def _limiter(rate_per_second: float) -> AsyncLimiter | None:
    if rate_per_second <= 0:
        return None
    # A token bucket of about one second's worth of messages.
    burst = max(1.0, rate_per_second)
    return AsyncLimiter(max_rate=burst, time_period=burst / rate_per_second)


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass


async def mark_bounced(session: AsyncSession, subscriber_id: int | None, reply: str) -> None:
    """A 5xx on the recipient at send time is a hard bounce, recorded like any other."""
    if subscriber_id is None:
        return
    subscriber = await session.get(Subscriber, subscriber_id)
    if subscriber is not None:
        await apply_bounce(
            session, subscriber=subscriber, type=BounceType.hard, reason=reply, source="smtp"
        )


async def _finish_completed_digests(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    async with sessionmaker() as session:
        await finish_completed_digests(session)
        await session.commit()
