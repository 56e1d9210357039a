"""The sender: claim batches from the outbox, have each row's kind compose it, deliver over a few
reused SMTP connections, and record each outcome right after the server answers.

Flow of one worker, and who owns what:

    Sender.run ── claim + compose batch N+1 (one task ahead) ──┐
                  deliver batch N: lanes (one SMTP connection each) take messages from a deque
                  Recorder      writes `sent` outcomes in small groups (its own task)
                  Watcher       checks the rows in hand twice a second, renews leases
    listener ──── signals (pause, cancel, unsubscribe) ──> Control <── read before each message
    RelayHealth / BounceGuard: what the relay's answers mean (reachable? refusing everyone?)

The sender knows emails only through `app.outbox.kinds`: it imports no domain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from app import metrics
from app.config import Settings
from app.mail.dkim import DkimSigner
from app.mail.transport import Connection, Mailer, SendError
from app.models import utcnow
from app.outbox import breakers, signals, tally
from app.outbox import queue as outbox
from app.outbox.identity import verp_sender
from app.outbox.kinds import Composition, Kinds, Outgoing
from app.outbox.queue import Claimed
from app.worker.control import Control, Stop, Watcher
from app.worker.pacing import Pace, is_throttling, speaks_of_volume
from app.worker.recorder import Recorder
from app.worker.relay import BounceGuard, RelayHealth, Verdict

log = logging.getLogger("app.worker")


@dataclass(slots=True)
class BatchReport:
    claimed: int = 0
    sent: int = 0
    skipped: int = 0
    retried: int = 0
    failed: int = 0
    released: int = 0
    held: int = 0  # hard bounces held until the relay shows it delivers (see relay.py)
    errors: list[str] = field(default_factory=list)

    def add(self, other: BatchReport) -> None:
        self.claimed += other.claimed
        self.sent += other.sent
        self.skipped += other.skipped
        self.retried += other.retried
        self.failed += other.failed
        self.released += other.released
        self.held += other.held
        self.errors += other.errors


@dataclass(slots=True)
class Batch:
    claimed: list[Claimed]
    outgoing: list[Outgoing]
    skipped: int = 0


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class ConnectionPool:
    """Open SMTP connections between batches, with the messages each has carried."""

    def __init__(self, mailer: Mailer, *, max_messages: int) -> None:
        self.mailer = mailer
        self.max_messages = max_messages
        self._idle: list[tuple[Connection, int]] = []

    async def acquire(self) -> tuple[Connection, int]:
        while self._idle:
            connection, used = self._idle.pop()
            if connection.usable:
                return connection, used
            await connection.close()  # the relay hung up or said 421 while it was idle
        return await self.mailer.connect(), 0

    async def give_back(self, connection: Connection, used: int) -> None:
        if used >= self.max_messages:
            await connection.close()
        else:
            self._idle.append((connection, used))

    async def close_all(self) -> None:
        idle, self._idle = self._idle, []
        for connection, _ in idle:
            await connection.close()


class Sender:
    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        mailer: Mailer,
        kinds: Kinds,
        *,
        worker_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.mailer = mailer
        self.kinds = kinds
        self.worker_id = worker_id or default_worker_id()
        self.pace = Pace(ceiling=settings.send_rate_per_second, lanes=settings.send_concurrency)
        # Built once: a half-configured DKIM setup fails here, at start, with a clear message.
        self.signer = DkimSigner.from_settings(settings)
        self.pool = ConnectionPool(mailer, max_messages=settings.smtp_messages_per_connection)
        self.relay = RelayHealth()
        self.guard = BounceGuard(
            run_limit=settings.send_pause_after_permanent_errors,
            sample=settings.send_refusal_sample,
            max_share=settings.send_refusal_max_share,
        )
        self.control = Control(
            halting_kinds=kinds.halting, forget_after=float(settings.send_lease_seconds)
        )
        self.recorder = Recorder(sessionmaker, self.worker_id)
        self.watcher = Watcher(
            sessionmaker,
            kinds,
            self.control,
            worker_id=self.worker_id,
            lease_seconds=settings.send_lease_seconds,
        )
        self._stopping = asyncio.Event()

    # --- The loop ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Send until `stop` is set; then finish the messages in flight, release the rest."""
        self._stopping = stop
        log.info("worker %s sending through %s", self.worker_id, self.mailer.description)
        stop_listening = asyncio.Event()
        listener = asyncio.create_task(
            signals.listen(self.settings.database_url, self.control.on_signal, stop_listening),
            name="outbox-signals",
        )
        prefetch: asyncio.Task[Batch] | None = None
        try:
            while not stop.is_set():
                wait = self.relay.wait_seconds()
                if wait > 0:
                    await _sleep_unless(stop, wait)
                    continue
                try:
                    batch = await (prefetch or self._claim())
                    prefetch = None
                    if not batch.claimed:
                        await self._idle()
                        await _sleep_unless(stop, self.settings.worker_poll_seconds)
                        continue
                    # Claim the next batch while this one is on the wire.
                    prefetch = asyncio.create_task(self._claim())
                    await self._deliver(batch)
                except Exception:  # the loop must outlive any one bad batch or database blip
                    log.exception("batch failed; retrying after a pause")
                    await _sleep_unless(stop, max(1.0, self.settings.worker_poll_seconds))
        finally:
            if prefetch is not None:
                try:
                    leftover = await prefetch
                    await self._release([o.delivery for o in leftover.outgoing])
                except Exception:
                    log.exception("could not release the prefetched batch; its lease will expire")
            with contextlib.suppress(Exception):
                await self._release([h.item.delivery for h in self.guard.release_all()])
            await self.pool.close_all()
            try:
                await self.recorder.flush(counters=True)
            except Exception:
                log.exception("could not record the last sent messages; they may be resent")
            stop_listening.set()
            await listener
            log.info("worker %s stopped", self.worker_id)

    async def run_batch(self) -> BatchReport:
        """Claim, compose and deliver one batch (tests and one-shot tools); when there is
        nothing to claim, settle what is held."""
        batch = await self._claim()
        if not batch.claimed:
            return await self._idle()
        return await self._deliver(batch)

    async def _idle(self) -> BatchReport:
        """Nothing to claim: close connections, decide on the bounces still held."""
        await self.pool.close_all()
        report = BatchReport()
        verdict = self.guard.idle()
        if verdict.apply or verdict.give_back:
            await self._carry_out(verdict, report)
        return report

    # --- Claim and compose ------------------------------------------------------------------

    async def _claim(self) -> Batch:
        claimed_at = time.monotonic()
        async with self.sessionmaker() as session:
            claimed = await outbox.claim_batch(
                session,
                worker_id=self.worker_id,
                limit=self.settings.send_batch_size,
                lease_seconds=self.settings.send_lease_seconds,
                only=self.kinds.claim_filter(),
            )
            await session.commit()
        if not claimed:
            return Batch([], [])
        self.control.resumed(
            {c.digest_id for c in claimed if c.digest_id is not None}, claimed_at=claimed_at
        )
        by_kind: dict[str, list[Claimed]] = defaultdict(list)
        for delivery in claimed:
            by_kind[delivery.kind].append(delivery)
        composition = Composition()
        async with self.sessionmaker() as session:
            for name, deliveries in by_kind.items():
                kind = self.kinds.get(name)
                if kind is None:
                    log.warning("deliveries of unknown kind %r skipped", name)
                    composition.skipped += [(d.id, f"unknown kind {name!r}") for d in deliveries]
                    continue
                composition.extend(await kind.compose(session, deliveries))
            for item in composition.outgoing:
                item.sender = verp_sender(self.settings, item.delivery.id)
            if self.signer is not None and composition.outgoing:
                # Signing is CPU work: off the event loop so the lanes keep talking SMTP.
                await asyncio.to_thread(_sign_all, self.signer, composition.outgoing)
            reasons: dict[str, list[int]] = defaultdict(list)
            for delivery_id, why in composition.skipped:
                reasons[why].append(delivery_id)
            for why, ids in reasons.items():
                await outbox.mark_skipped(session, worker_id=self.worker_id, ids=ids, reason=why)
            for delivery, reason in composition.broken:
                # Retried with backoff like a temporary SMTP error, failed after the last attempt.
                await self._retry_or_fail(session, delivery, reason)
            await session.commit()
        return Batch(claimed, composition.outgoing, skipped=len(composition.skipped))

    # --- Deliver ----------------------------------------------------------------------------

    async def _deliver(self, batch: Batch) -> BatchReport:
        started = time.perf_counter()
        report = BatchReport(claimed=len(batch.claimed), skipped=batch.skipped)
        pending = deque(batch.outgoing)
        unsent: list[Claimed] = []
        lanes = min(self.pace.lanes, len(pending))
        done = asyncio.Event()

        def in_hand() -> list[Claimed]:
            held = [h.item.delivery for h in self.guard.held()]
            return [o.delivery for o in batch.outgoing] + held

        flusher = asyncio.create_task(self.recorder.run(done))
        watcher = asyncio.create_task(self.watcher.run(in_hand, done))
        try:
            await asyncio.gather(
                *(self._lane(lane, pending, report, unsent) for lane in range(lanes))
            )
        finally:
            done.set()
            await flusher
            await watcher
            try:
                await self.recorder.flush(counters=True)
            except Exception:  # kept by the recorder; the next batch's flusher tries again
                log.warning("could not record this batch's sent messages yet", exc_info=True)
            unsent.extend(item.delivery for item in pending)
            if unsent:
                try:
                    await self._release(unsent)
                    report.released += len(unsent)
                except Exception:  # their lease runs out and another claim takes them
                    log.warning("could not give unsent messages back", exc_info=True)
            self.control.done_with(c.id for c in batch.claimed)
        report.held = len(self.guard.held())
        await self._finish_sends(batch.claimed)
        await self._report_pace(batch.claimed)
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
                "held": report.held,
                "duration_ms": round((time.perf_counter() - started) * 1000),
                "errors": report.errors[:3],
            },
        )
        return report

    async def _lane(
        self, lane: int, pending: deque[Outgoing], report: BatchReport, unsent: list[Claimed]
    ) -> None:
        connection: Connection | None = None
        used = 0
        try:
            while pending:
                if self._stopping.is_set() or self.relay.is_down():
                    return  # what is left in `pending` is released by _deliver
                if lane >= self.pace.lanes:
                    return  # the relay refused connections: fewer lanes (pacing.py)
                item = pending.popleft()
                if connection is not None and not connection.usable:
                    # Lost between two copies (a 421 while idle): nobody's copy was tried on
                    # it, so a new session, and no attempt counted.
                    await connection.close()
                    connection = None
                if connection is None:
                    try:
                        connection, used = await self.pool.acquire()
                    except SendError as exc:
                        await self._connect_failed(item, exc, report)
                        continue
                if self.pace.rate is not None and await self._turn_or_stop(item, report, unsent):
                    continue
                # Checked last, right before the wire: a pause, cancel or unsubscribe answered
                # before this point stops this message.
                if self._stop_here(item, report, unsent):
                    continue
                send_started = time.perf_counter()
                try:
                    await connection.send(
                        item.message,
                        sender=item.sender,
                        recipient=item.recipient,
                        wire_ready=item.wire_ready,
                    )
                except SendError as exc:
                    if not exc.recipient or not exc.permanent:
                        # The connection may be in any state after a fault: start afresh.
                        await connection.close()
                        connection = None
                    await self._send_failed(item, exc, report)
                    continue
                metrics.observe_send(time.perf_counter() - send_started)
                used += 1
                self.relay.delivered()
                self.pace.delivered()
                self.recorder.sent(item)
                self.recorder.count(item, "delivered")
                report.sent += 1
                verdict = self.guard.delivered(item)
                if verdict.apply:
                    await self._carry_out(verdict, report)
                if used >= self.settings.smtp_messages_per_connection:
                    await connection.close()
                    connection = None
        finally:
            if connection is not None:
                await self.pool.give_back(connection, used)

    async def _turn_or_stop(
        self, item: Outgoing, report: BatchReport, unsent: list[Claimed]
    ) -> bool:
        """Wait for this copy's turn (SEND_RATE_PER_SECOND), looking again whenever a send
        halts or a reader leaves: True if it was stopped meanwhile (settled). Without that,
        a paused send's rows stayed `sending` while each lane waited out its turn."""
        if self._stop_here(item, report, unsent):
            return True
        turn = self.pace.next_turn()
        while (wait := turn - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.control.news.wait(), wait)
            if self._stop_here(item, report, unsent):
                return True
        return False

    def _stop_here(self, item: Outgoing, report: BatchReport, unsent: list[Claimed]) -> bool:
        """Whether a pause, cancel or unsubscribe answered by now stops this copy (settled)."""
        stop = self.control.stop_for(item.delivery)
        if stop is None:
            return False
        self._stopped(item, stop, report, unsent)
        return True

    def _stopped(
        self, item: Outgoing, stop: Stop, report: BatchReport, unsent: list[Claimed]
    ) -> None:
        if stop is Stop.halted:
            unsent.append(item.delivery)  # back to the queue (a cancel then skips it)
        elif stop is Stop.left:
            self.recorder.left(item.delivery.id)
            report.skipped += 1
        # Stop.lost: another worker holds it now; nothing to write.

    # --- Outcomes ---------------------------------------------------------------------------

    async def _connect_failed(self, item: Outgoing, exc: SendError, report: BatchReport) -> None:
        """No session with the relay: nobody's mail was tried, so no attempt is counted."""
        report.errors.append(exc.reply)
        if exc.permanent:  # e.g. authentication refused: our setup, not the relay's health
            await self._setup_error(item, exc, report)
            return
        delay = outbox.backoff_seconds(
            self.relay.failure_count(),
            base=min(5.0, self.settings.send_retry_base_seconds),
            cap=min(60.0, self.settings.send_retry_max_seconds),
        )
        self.relay.unreachable(delay)
        self.pace.connection_refused()
        log.warning("SMTP relay unreachable (%s); pausing %.1fs", exc.reply, delay)
        await self._release(
            [item.delivery], reason=exc.reply, retry_at=utcnow() + timedelta(seconds=delay)
        )
        report.released += 1

    async def _send_failed(self, item: Outgoing, exc: SendError, report: BatchReport) -> None:
        report.errors.append(exc.reply)
        if exc.permanent and exc.recipient:
            # 5xx on the recipient (550 no such user...): a hard bounce, unless the relay turns
            # out to refuse everyone: held until that is known (relay.py).
            verdict = self.guard.refused(item, exc.reply)
            await self._carry_out(verdict, report)
            return
        if exc.permanent and exc.stage != "rcpt":
            await self._setup_error(item, exc, report)
            return
        if is_throttling(exc):
            self.pace.throttling()
            if speaks_of_volume(exc):
                await self._throttled(item, exc, report)
                return
        if not exc.permanent:
            self.recorder.count(item, "deferred")
        async with self.sessionmaker() as session:
            # Failing for a temporary refusal of the recipient (4xx at RCPT) is a soft bounce;
            # for a dropped connection or a timeout it says nothing of the reader.
            soft_bounce = exc.recipient and exc.code is not None and not exc.permanent
            retried = await self._retry_or_fail(
                session, item.delivery, exc.reply, soft_bounce=soft_bounce
            )
            await session.commit()
        if retried:
            report.retried += 1
        else:
            report.failed += 1
        if exc.permanent:
            # A policy refusal of one recipient (5.7.x): maybe that domain blocks us, maybe our
            # relay refuses everyone. Counted against this delivery (failed after the last
            # attempt, never a bounce) and toward pausing the send.
            await self._pause_if_setup_broken(item, exc, self.relay.setup_error())

    async def _throttled(self, item: Outgoing, exc: SendError, report: BatchReport) -> None:
        """The relay asks us to slow down: the pace drops (pacing.py) and the message is tried
        again in a moment. No attempt is counted: the reply says nothing of the reader."""
        self.recorder.count(item, "deferred")
        delay = outbox.backoff_seconds(
            1, base=min(2.0, self.settings.send_retry_base_seconds), cap=2.0
        )
        async with self.sessionmaker() as session:
            await outbox.mark_retry(
                session,
                worker_id=self.worker_id,
                delivery_id=item.delivery.id,
                reply=exc.reply,
                retry_at=utcnow() + timedelta(seconds=delay),
                count_attempt=False,
            )
            await self._requeued(session, item.delivery)
            await session.commit()
        report.retried += 1

    async def _carry_out(self, verdict: Verdict, report: BatchReport) -> None:
        """Apply the bounces judged real; give back the others and pause their sends. Bounces
        of a send paused or cancelled meanwhile are given back too, never applied: whether the
        relay refused everyone is then unknown, and the send's rows wait for the editor."""
        if verdict.apply:
            applied: list[Claimed] = []
            halted_back: list[Claimed] = []
            async with self.sessionmaker() as session:
                halted = await self._halted(session, [h.item.delivery for h in verdict.apply])
                counts: dict[tally.TallyKey, dict[str, int]] = {}
                for held in verdict.apply:
                    delivery = held.item.delivery
                    if delivery.digest_id is not None and delivery.digest_id in halted.get(
                        delivery.kind, set()
                    ):
                        halted_back.append(delivery)
                        continue
                    if not await outbox.mark_failed(
                        session, worker_id=self.worker_id, delivery_id=delivery.id, reply=held.reply
                    ):
                        continue  # not ours any more (lease taken over): its holder decides
                    applied.append(delivery)
                    kind = self.kinds.get(delivery.kind)
                    if kind is not None:
                        await kind.bounced(session, delivery=delivery, reply=held.reply)
                    if delivery.digest_id is not None:
                        key = (
                            delivery.kind,
                            delivery.digest_id,
                            tally.domain_of(held.item.recipient),
                        )
                        counts.setdefault(key, {"bounced": 0})["bounced"] += 1
                await tally.add(session, counts)
                await session.commit()
            report.failed += len(applied)
            if halted_back:
                await self._release(halted_back)
                report.released += len(halted_back)
            await self._check_breakers(applied)
            await self._finish_sends(applied)
        if verdict.give_back:
            reason = f"paused: {verdict.reason}. Check the relay, then resume."
            await self._pause_sends([h.item.delivery for h in verdict.give_back], reason)
            retry_at = utcnow() + timedelta(seconds=self.settings.send_retry_base_seconds)
            await self._release(
                [h.item.delivery for h in verdict.give_back], reason=reason, retry_at=retry_at
            )
            report.released += len(verdict.give_back)

    async def _pause_sends(self, deliveries: Iterable[Claimed], reason: str) -> None:
        sends = {(d.kind, d.digest_id) for d in deliveries}
        async with self.sessionmaker() as session:
            for kind_name, send_id in sends:
                kind = self.kinds.get(kind_name)
                if kind is None or send_id is None or not kind.stops_with_send:
                    continue
                if await kind.pause_send(session, send_id=send_id, reason=reason):
                    log.error("send %s paused: %s", send_id, reason)
                self.control.halt(send_id)
            await session.commit()

    async def _halted(
        self, session: AsyncSession, deliveries: Iterable[Claimed]
    ) -> dict[str, set[int]]:
        """Of these rows' sends, those paused or cancelled now (read from the database: the
        pause may have come from another process, or while this worker was idle)."""
        sends: dict[str, set[int]] = defaultdict(set)
        for delivery in deliveries:
            if delivery.digest_id is not None:
                sends[delivery.kind].add(delivery.digest_id)
        halted: dict[str, set[int]] = {}
        for name, send_ids in sends.items():
            kind = self.kinds.get(name)
            if kind is not None and kind.stops_with_send:
                halted[name] = await kind.halted_sends(session, send_ids=send_ids)
                for send_id in halted[name]:
                    self.control.halt(send_id)
        return halted

    async def _check_breakers(self, deliveries: Sequence[Claimed]) -> None:
        """After bounces are recorded: pause the sends whose bounce rate trips the breaker."""
        sends = {(d.kind, d.digest_id) for d in deliveries if d.digest_id is not None}
        if not sends:
            return
        await self.recorder.flush(counters=True)  # the rate over this worker's latest answers
        async with self.sessionmaker() as session:
            paused = await breakers.check(
                session, settings=self.settings, kinds=self.kinds, sends=sends
            )
            await session.commit()
        for _, send_id, _ in paused:
            self.control.halt(send_id)

    async def _report_pace(self, claimed: Sequence[Claimed]) -> None:
        """The pace of this worker, for the progress of the sends in this batch."""
        if self.pace.rate is None and self.pace.throttled_at is None:
            return  # unlimited and never throttled: nothing worth a write
        sends = {(c.kind, c.digest_id) for c in claimed if c.digest_id is not None}
        sends = {s for s in sends if s[0] in self.kinds.halting}
        if not sends:
            return
        throttled_at = self.pace.throttled_at
        try:
            async with self.sessionmaker() as session:
                await tally.report_pace(
                    session,
                    worker_id=self.worker_id,
                    sends=[(k, i) for k, i in sends if i is not None],
                    rate_per_second=self.pace.reported_rate(),
                    throttled_at=(
                        datetime.fromtimestamp(throttled_at, UTC) if throttled_at else None
                    ),
                )
                await session.commit()
        except Exception:  # only a figure for the progress: the next batch reports again
            log.warning("could not report the pace", exc_info=True)

    async def _retry_or_fail(
        self, session: AsyncSession, delivery: Claimed, reply: str, *, soft_bounce: bool = False
    ) -> bool:
        """Back to the queue after a jittered backoff (True), or failed for good once
        SEND_MAX_ATTEMPTS is reached (False), with the last reply kept. `soft_bounce`: the
        reply was a temporary refusal of the recipient; failing for it is a soft bounce."""
        attempts = delivery.attempts + 1
        if attempts >= self.settings.send_max_attempts:
            failed = await outbox.mark_failed(
                session, worker_id=self.worker_id, delivery_id=delivery.id, reply=reply
            )
            kind = self.kinds.get(delivery.kind)
            if failed and soft_bounce and kind is not None:
                await kind.soft_bounced(session, delivery=delivery, reply=reply)
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
        await self._requeued(session, delivery)
        return True

    async def _requeued(self, session: AsyncSession, delivery: Claimed) -> None:
        """A copy back in the queue after a failed try: skipped at once if its send was
        cancelled meanwhile (it stayed `queued` for good: nobody claims a cancelled send's
        rows), as a released one is. Asked of the database, not of what this worker has heard:
        a cancel it learns after this try would leave the row queued for good."""
        kind = self.kinds.get(delivery.kind)
        if kind is not None:
            await kind.released(session, ids=[delivery.id])

    async def _setup_error(self, item: Outgoing, exc: SendError, report: BatchReport) -> None:
        """A permanent error that blames our setup (credentials, sender, relay policy): the
        delivery goes back to the queue untouched; past a threshold its send is paused."""
        count = self.relay.setup_error()
        delay = outbox.backoff_seconds(
            count,
            base=min(1.0, self.settings.send_retry_base_seconds),
            cap=self.settings.send_retry_max_seconds,
        )
        await self._release(
            [item.delivery], reason=exc.reply, retry_at=utcnow() + timedelta(seconds=delay)
        )
        report.released += 1
        await self._pause_if_setup_broken(item, exc, count)

    async def _pause_if_setup_broken(self, item: Outgoing, exc: SendError, count: int) -> None:
        """Past SEND_PAUSE_AFTER_PERMANENT_ERRORS in a row, the send is paused with the reason."""
        if count >= self.settings.send_pause_after_permanent_errors:
            reason = (
                f"paused after {count} consecutive permanent SMTP errors "
                f"that point at the sending setup; last reply: {exc.reply}"
            )
            await self._pause_sends([item.delivery], reason)

    async def _release(
        self,
        deliveries: Sequence[Claimed],
        *,
        reason: str | None = None,
        retry_at: datetime | None = None,
    ) -> None:
        if not deliveries:
            return
        ids = [d.id for d in deliveries]
        async with self.sessionmaker() as session:
            await outbox.release(
                session, worker_id=self.worker_id, ids=ids, retry_at=retry_at, reason=reason
            )
            for name in {d.kind for d in deliveries}:
                kind = self.kinds.get(name)
                if kind is not None:
                    await kind.released(session, ids=[d.id for d in deliveries if d.kind == name])
            await session.commit()

    async def _finish_sends(self, deliveries: Sequence[Claimed]) -> None:
        sends: dict[str, set[int]] = defaultdict(set)
        for delivery in deliveries:
            if delivery.digest_id is not None:
                sends[delivery.kind].add(delivery.digest_id)
        if not sends:
            return
        async with self.sessionmaker() as session:
            for name, send_ids in sends.items():
                kind = self.kinds.get(name)
                if kind is not None:
                    await kind.finish_sends(session, send_ids=send_ids)
            await session.commit()


def _sign_all(signer: DkimSigner, outgoing: list[Outgoing]) -> None:
    for item in outgoing:
        # A wire-ready copy (CRLF only) skips the signer's line-end scans: ~65 µs a message.
        item.message = signer.sign(item.message, wire_ready=item.wire_ready)


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
