"""The sender: claim a batch from the outbox, compose, deliver over a few reused connections,
record each outcome right after the server answers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from app import metrics
from app.config import Settings
from app.mail.compose import Recipient, compose_confirmation
from app.mail.message import envelope_sender
from app.mail.transport import Connection, Mailer, SendError
from app.models import DeliveryKind, Subscriber, SubscriberStatus, utcnow
from app.worker import outbox
from app.worker.outbox import Claimed

log = logging.getLogger("app.worker")


@dataclass(slots=True)
class Outgoing:
    delivery: Claimed
    recipient: str
    message: bytes
    message_id: str


@dataclass(slots=True)
class BatchReport:
    claimed: int = 0
    sent: int = 0
    skipped: int = 0
    retried: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Sender:
    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        mailer: Mailer,
        tokens: object,
        *,
        worker_id: str | None = None,
    ) -> None:
        from app.security import Tokens

        assert isinstance(tokens, Tokens)
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.mailer = mailer
        self.tokens = tokens
        self.worker_id = worker_id or default_worker_id()
        self.envelope_from = envelope_sender(settings.mail_from)

    async def run(self, stop: asyncio.Event) -> None:
        log.info("worker %s sending through %s", self.worker_id, self.mailer.description)
        while not stop.is_set():
            try:
                report = await self.run_batch()
            except Exception:  # the loop must outlive any one bad batch
                log.exception("batch failed; retrying after a pause")
                report = BatchReport()
            if report.claimed == 0:
                try:
                    await asyncio.wait_for(stop.wait(), timeout=self.settings.worker_poll_seconds)
                except TimeoutError:
                    pass

    async def run_batch(self) -> BatchReport:
        started = time.perf_counter()
        async with self.sessionmaker() as session:
            claimed = await outbox.claim_batch(
                session,
                worker_id=self.worker_id,
                limit=self.settings.send_batch_size,
                lease_seconds=self.settings.send_lease_seconds,
            )
            await session.commit()
        report = BatchReport(claimed=len(claimed))
        if not claimed:
            return report
        async with self.sessionmaker() as session:
            outgoing, skipped = await self._compose(session, claimed)
            await outbox.mark_skipped(
                session, worker_id=self.worker_id, ids=skipped, reason="subscriber not eligible"
            )
            await session.commit()
        report.skipped = len(skipped)
        await self._deliver(outgoing, report)
        log.info(
            "batch done",
            extra={
                "worker": self.worker_id,
                "count": report.claimed,
                "sent": report.sent,
                "skipped": report.skipped,
                "retried": report.retried,
                "failed": report.failed,
                "duration_ms": round((time.perf_counter() - started) * 1000),
                "errors": report.errors[:5],
            },
        )
        return report

    async def _compose(
        self, session: AsyncSession, claimed: Sequence[Claimed]
    ) -> tuple[list[Outgoing], list[int]]:
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
        for delivery in claimed:
            recipient = recipients.get(delivery.subscriber_id or -1)
            if delivery.kind == DeliveryKind.confirmation:
                # Only a reader still waiting to confirm gets the link; one who confirmed,
                # left or bounced meanwhile gets nothing.
                if (
                    recipient is None
                    or recipient.email is None
                    or recipient.status != SubscriberStatus.pending
                ):
                    skipped.append(delivery.id)
                    continue
                message, message_id = compose_confirmation(
                    self.settings, self.tokens, delivery_id=delivery.id, recipient=recipient
                )
                outgoing.append(Outgoing(delivery, recipient.email, message, message_id))
            else:
                log.warning("delivery %s: kind %s not handled yet", delivery.id, delivery.kind)
                skipped.append(delivery.id)
        return outgoing, skipped

    async def _deliver(self, outgoing: list[Outgoing], report: BatchReport) -> None:
        connection: Connection | None = None
        try:
            for item in outgoing:
                try:
                    if connection is None:
                        connection = await self.mailer.connect()
                    send_started = time.perf_counter()
                    await connection.send(
                        item.message, sender=self.envelope_from, recipient=item.recipient
                    )
                    metrics.observe_send(time.perf_counter() - send_started)
                except SendError as exc:
                    if connection is not None and not exc.recipient:
                        await connection.close()
                        connection = None
                    await self._record_failure(item, exc, report)
                    continue
                async with self.sessionmaker() as session:
                    await outbox.mark_sent(
                        session,
                        worker_id=self.worker_id,
                        sent=[(item.delivery.id, item.message_id)],
                    )
                    await session.commit()
                report.sent += 1
        finally:
            if connection is not None:
                await connection.close()

    async def _record_failure(self, item: Outgoing, exc: SendError, report: BatchReport) -> None:
        report.errors.append(exc.reply)
        attempts = item.delivery.attempts + 1
        async with self.sessionmaker() as session:
            if exc.permanent and exc.recipient:
                await outbox.mark_failed(
                    session, worker_id=self.worker_id, delivery_id=item.delivery.id, reply=exc.reply
                )
                await _mark_bounced(session, item.delivery.subscriber_id, exc.reply)
                report.failed += 1
            elif attempts >= self.settings.send_max_attempts:
                await outbox.mark_failed(
                    session, worker_id=self.worker_id, delivery_id=item.delivery.id, reply=exc.reply
                )
                report.failed += 1
            else:
                delay = outbox.backoff_seconds(
                    attempts,
                    base=self.settings.send_retry_base_seconds,
                    cap=self.settings.send_retry_max_seconds,
                )
                await outbox.mark_retry(
                    session,
                    worker_id=self.worker_id,
                    delivery_id=item.delivery.id,
                    reply=exc.reply,
                    retry_at=utcnow() + timedelta(seconds=delay),
                )
                report.retried += 1
            await session.commit()


async def _mark_bounced(session: AsyncSession, subscriber_id: int | None, reply: str) -> None:
    if subscriber_id is None:
        return
    now = utcnow()
    await session.execute(
        sa.update(Subscriber)
        .where(col(Subscriber.id) == subscriber_id)
        .values(status=SubscriberStatus.bounced, bounced_at=now, updated_at=now)
    )
