"""The sender against a real SMTP server that injects faults."""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections import Counter

import pytest
from fastapi import FastAPI
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.mail.message import MessageTemplate
from app.mail.personalize import fill, placeholders
from app.models import Delivery, DeliveryStatus, Subscriber, SubscriberStatus
from tests.factories import drain_outbox, make_sender, queue_confirmations, send_one_batch
from tests.smtp_server import SmtpServer


async def deliveries(session: AsyncSession) -> list[Delivery]:
    session.expire_all()
    return list((await session.exec(select(Delivery).order_by(col(Delivery.id)))).all())


def received_counts(smtp_server: SmtpServer) -> Counter[str]:
    return Counter(r.rcpt_tos[0] for r in smtp_server.received)


async def test_many_messages_over_few_connections_exactly_once(
    app: FastAPI, session: AsyncSession, smtp_server: SmtpServer
) -> None:
    app.state.settings.send_batch_size = 40
    app.state.settings.smtp_messages_per_connection = 15
    await queue_confirmations(session, app.state.tokens, 120)
    report = await drain_outbox(app)
    assert report.sent == 120
    counts = received_counts(smtp_server)
    assert len(counts) == 120
    assert set(counts.values()) == {1}
    rows = await deliveries(session)
    assert {d.status for d in rows} == {DeliveryStatus.sent}
    assert all(d.message_id and d.sent_at for d in rows)
    # Message-IDs are stable per delivery and unique
    assert len({d.message_id for d in rows}) == 120


async def test_hard_bounce_fails_at_once_and_suppresses(
    app: FastAPI, session: AsyncSession, smtp_server: SmtpServer
) -> None:
    await queue_confirmations(session, app.state.tokens, 3)
    smtp_server.faults.rcpt["reader1@example.org"] = "550 5.1.1 <reader1@example.org>: No such user"
    report = await drain_outbox(app)
    assert report.sent == 2
    assert report.failed == 1
    rows = await deliveries(session)
    failed = [d for d in rows if d.status == DeliveryStatus.failed]
    assert len(failed) == 1
    assert failed[0].attempts == 1
    assert "550 5.1.1" in (failed[0].last_error or "")
    subscriber = await session.get(Subscriber, failed[0].subscriber_id)
    assert subscriber is not None
    assert subscriber.status == SubscriberStatus.bounced
    assert subscriber.bounced_at is not None


async def test_relay_denied_is_not_a_bounce(
    app: FastAPI, session: AsyncSession, smtp_server: SmtpServer
) -> None:
    await queue_confirmations(session, app.state.tokens, 1)
    smtp_server.faults.rcpt["reader0@example.org"] = "554 5.7.1 Relay access denied"
    report = await send_one_batch(app)
    assert report.failed == 0
    assert report.retried == 1
    [row] = await deliveries(session)
    assert row.status == DeliveryStatus.queued
    assert row.attempts == 1  # counted against this delivery: it cannot be retried forever
    subscriber = await session.get(Subscriber, row.subscriber_id)
    assert subscriber is not None
    assert subscriber.status == SubscriberStatus.pending


async def test_temporary_errors_retry_then_succeed(
    app: FastAPI, session: AsyncSession, smtp_server: SmtpServer
) -> None:
    await queue_confirmations(session, app.state.tokens, 3)
    for i, reply in enumerate(
        ["421 4.3.2 Service shutting down", "451 4.3.0 Later", "452 4.2.2 Mailbox full"]
    ):
        smtp_server.faults.rcpt[f"reader{i}@example.org"] = reply
        smtp_server.faults.rcpt_times[f"reader{i}@example.org"] = 2
    first = await send_one_batch(app)
    assert first.retried == 3
    rows = await deliveries(session)
    assert all(d.status == DeliveryStatus.queued and d.attempts == 1 for d in rows)
    for _ in range(50):
        await drain_outbox(app)
        if received_counts(smtp_server).total() == 3:
            break
        await asyncio.sleep(0.05)
    assert received_counts(smtp_server) == Counter(
        {"reader0@example.org": 1, "reader1@example.org": 1, "reader2@example.org": 1}
    )
    rows = await deliveries(session)
    assert all(d.status == DeliveryStatus.sent and d.attempts == 3 for d in rows)


async def test_gives_up_after_max_attempts_with_last_reply(
    app: FastAPI, session: AsyncSession, smtp_server: SmtpServer
) -> None:
    app.state.settings.send_max_attempts = 3
    await queue_confirmations(session, app.state.tokens, 1)
    smtp_server.faults.rcpt["reader0@example.org"] = "451 4.7.1 Greylisted, try later"
    for _ in range(60):
        await drain_outbox(app)
        rows = await deliveries(session)
        if rows[0].status == DeliveryStatus.failed:
            break
        await asyncio.sleep(0.05)
    [row] = await deliveries(session)
    assert row.status == DeliveryStatus.failed
    assert row.attempts == 3
    assert "451 4.7.1 Greylisted" in (row.last_error or "")
    subscriber = await session.get(Subscriber, row.subscriber_id)
    assert subscriber is not None
    assert subscriber.status == SubscriberStatus.pending  # a soft failure is not a bounce


async def test_dropped_connections_lose_nothing_and_duplicate_nothing(
    app: FastAPI, session: AsyncSession, smtp_server: SmtpServer
) -> None:
    smtp_server.faults.drop_after_messages = 7  # the server hangs up after every 7th message
    await queue_confirmations(session, app.state.tokens, 60)
    for _ in range(100):
        await drain_outbox(app)
        if all(d.status == DeliveryStatus.sent for d in await deliveries(session)):
            break
        await asyncio.sleep(0.05)
    counts = received_counts(smtp_server)
    assert len(counts) == 60
    assert set(counts.values()) == {1}


async def test_connection_lost_before_the_reply_duplicates_at_most_those(
    app: FastAPI, session: AsyncSession, smtp_server: SmtpServer
) -> None:
    # The server stores the message, then the line drops before its 250 arrives: the sender
    # cannot know, retries, and that message arrives twice. Nothing is lost.
    smtp_server.faults.drop_before_reply_every = 10
    await queue_confirmations(session, app.state.tokens, 50)
    for _ in range(100):
        await drain_outbox(app)
        if all(d.status == DeliveryStatus.sent for d in await deliveries(session)):
            break
        await asyncio.sleep(0.05)
    counts = received_counts(smtp_server)
    assert len(counts) == 50
    duplicates = sum(n - 1 for n in counts.values())
    assert duplicates <= smtp_server.drops


async def test_slow_server_times_out_and_retries(
    app: FastAPI, session: AsyncSession, smtp_server: SmtpServer
) -> None:
    # A relay slower than the wait for its verdict on the content (SMTP_DATA_TIMEOUT_SECONDS).
    app.state.settings.smtp_timeout_seconds = 0.3
    app.state.settings.smtp_data_timeout_seconds = 0.3
    app.state.mailer.settings = app.state.settings
    await queue_confirmations(session, app.state.tokens, 2)
    smtp_server.faults.delay_seconds = 1.0
    report = await send_one_batch(app)
    assert report.sent == 0
    assert report.retried == 2
    smtp_server.faults.delay_seconds = 0
    await asyncio.sleep(0.3)
    await drain_outbox(app)
    rows = await deliveries(session)
    assert {d.status for d in rows} == {DeliveryStatus.sent}


async def test_server_down_fails_nothing_and_resumes(
    app: FastAPI, session: AsyncSession, smtp_server: SmtpServer
) -> None:
    app.state.settings.send_max_attempts = 2
    await queue_confirmations(session, app.state.tokens, 5)
    smtp_server.stop()
    sender = make_sender(app)
    stop = asyncio.Event()
    task = asyncio.create_task(sender.run(stop))
    await asyncio.sleep(1.5)  # several rounds of refused connections
    rows = await deliveries(session)
    assert all(d.status in (DeliveryStatus.queued, DeliveryStatus.sending) for d in rows)
    assert all(d.attempts == 0 for d in rows)
    smtp_server.start()
    for _ in range(200):
        await asyncio.sleep(0.1)
        if len(received_counts(smtp_server)) == 5:
            break
    stop.set()
    await task
    assert set(received_counts(smtp_server).values()) == {1}
    assert len(received_counts(smtp_server)) == 5
    assert {d.status for d in await deliveries(session)} == {DeliveryStatus.sent}


async def test_bad_sender_setup_fails_nothing(
    app: FastAPI, session: AsyncSession, smtp_server: SmtpServer
) -> None:
    await queue_confirmations(session, app.state.tokens, 4)
    smtp_server.faults.mail_from = "553 5.7.1 Sender address rejected: not owned by user"
    report = await send_one_batch(app)
    assert report.failed == 0
    assert report.released == 4
    rows = await deliveries(session)
    assert {d.status for d in rows} == {DeliveryStatus.queued}
    assert all(d.attempts == 0 and "553" in (d.last_error or "") for d in rows)


async def test_unsubscribed_or_confirmed_meanwhile_is_skipped(
    app: FastAPI, session: AsyncSession, smtp_server: SmtpServer
) -> None:
    ids = await queue_confirmations(session, app.state.tokens, 2)
    first = await session.get(Subscriber, ids[0])
    assert first is not None
    first.status = SubscriberStatus.confirmed
    session.add(first)
    await session.commit()
    report = await drain_outbox(app)
    assert report.sent == 1
    assert report.skipped == 1
    assert list(received_counts(smtp_server)) == ["reader1@example.org"]


async def test_rate_limit_spaces_messages(
    app: FastAPI, session: AsyncSession, smtp_server: SmtpServer
) -> None:
    app.state.settings.send_rate_per_second = 20
    await queue_confirmations(session, app.state.tokens, 30)
    sender = make_sender(app)
    loop = asyncio.get_running_loop()
    started = loop.time()
    report = await sender.run_batch()
    elapsed = loop.time() - started
    assert report.sent == 30
    assert elapsed >= 0.4  # 30 messages at 20/s with a one-second bucket: at least ~0.5 s


async def test_two_workers_share_the_queue_exactly_once(
    app: FastAPI, session: AsyncSession, smtp_server: SmtpServer, backend: str
) -> None:
    app.state.settings.send_batch_size = 25
    await queue_confirmations(session, app.state.tokens, 200)
    stop = asyncio.Event()
    senders = [make_sender(app) for _ in range(2)]
    tasks = [asyncio.create_task(s.run(stop)) for s in senders]
    for _ in range(300):
        await asyncio.sleep(0.05)
        if received_counts(smtp_server).total() >= 200:
            break
    await asyncio.sleep(0.2)
    stop.set()
    await asyncio.gather(*tasks)
    counts = received_counts(smtp_server)
    assert len(counts) == 200
    assert set(counts.values()) == {1}
    rows = await deliveries(session)
    assert {d.status for d in rows} == {DeliveryStatus.sent}
    assert len({d.leased_by for d in rows}) == 2 or backend == "sqlite"


def test_message_template_is_valid_mime_and_fills_per_recipient() -> None:
    marks = placeholders()
    name, unsubscribe = str(marks["name"]), str(marks["unsubscribe_url"])
    html = f"<p>Bonjour {name}</p>" + "<p>é" * 500 + f"<a href='{unsubscribe}'>x</a>"
    text = f"Bonjour {name}\n" + "ligne é\n" * 300 + ".un point\n" + name + "\n" + unsubscribe
    template = MessageTemplate(
        mail_from="Dzaleu <n@dzaleu.test>",
        subject="Les articles de la semaine - 30 décembre 2021",
        text=text,
        html=html,
        headers={"List-Id": "<newsletter.dzaleu.test>"},
    )
    values = {
        "name": ".Zoé <b>",
        "unsubscribe_url": "https://x.test/unsubscribe/t.k",
        "greeting_name": "",
        "email": "",
    }
    raw = template.render(
        to_name="Zoé\r\nBcc: x@evil.test",
        to_address="zoe@example.org",
        message_id="<nl.1.abc@dzaleu.test>",
        values=values,
        headers={"List-Unsubscribe": "<https://x.test/unsubscribe/t.k>"},
    )
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    # Wire-ready: CRLF only, and no line opens with "." (SMTP dot-stuffing never needed).
    assert raw.count(b"\n") == raw.count(b"\r\n") == raw.count(b"\r")
    assert b"\n." not in raw
    assert b"\nBcc:" not in raw.split(b"\r\n\r\n")[0]
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert message.get_content_type() == "multipart/alternative"
    assert message["Subject"] == "Les articles de la semaine - 30 décembre 2021"
    assert message["To"].addresses[0].addr_spec == "zoe@example.org"
    assert message["Message-ID"] == "<nl.1.abc@dzaleu.test>"
    assert message["Date"] is not None
    assert message["MIME-Version"] == "1.0"
    html_part = message.get_body(("html",))
    text_part = message.get_body(("plain",))
    assert html_part is not None
    assert text_part is not None
    assert html_part.get_content().replace("\r\n", "\n") == fill(html, values, escape_html=True)
    assert text_part.get_content().replace("\r\n", "\n") == fill(text, values, escape_html=False)
    assert not message.defects


async def test_one_delivery_that_cannot_be_composed_does_not_sink_the_batch(
    app: FastAPI, session: AsyncSession, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.subscriptions import delivery as confirmation_module

    real = confirmation_module.compose_confirmation

    def flaky(settings, tokens, *, delivery_id, recipient):
        if recipient.email == "reader1@example.org":
            raise ValueError("template exploded")
        return real(settings, tokens, delivery_id=delivery_id, recipient=recipient)

    monkeypatch.setattr(confirmation_module, "compose_confirmation", flaky)
    await queue_confirmations(session, app.state.tokens, 3)
    report = await send_one_batch(app)
    assert report.sent == 2
    rows = {d.subscriber_id: d for d in await deliveries(session)}
    broken = [d for d in rows.values() if d.status != DeliveryStatus.sent]
    assert len(broken) == 1
    assert broken[0].status == DeliveryStatus.queued
    assert broken[0].attempts == 1
    assert "template exploded" in (broken[0].last_error or "")


def test_prepare_data_stuffs_dots_and_fixes_line_ends() -> None:
    from app.mail.transport import prepare_data

    assert prepare_data(b"a\r\nb\r\n") == b"a\r\nb\r\n.\r\n"
    assert (
        prepare_data(b".start\r\nx\r\n.\r\n..two\r\n") == b"..start\r\nx\r\n..\r\n...two\r\n.\r\n"
    )
    assert prepare_data(b"bare\nlf\rcr") == b"bare\r\nlf\r\ncr\r\n.\r\n"


async def test_a_line_starting_with_a_dot_arrives_intact(
    app: FastAPI, session: AsyncSession, smtp_server: SmtpServer
) -> None:
    """Dot-stuffing on the wire, un-stuffed by the server: the reader sees the text as written."""
    from app.mail.transport import SmtpMailer

    mailer = SmtpMailer(app.state.settings)
    connection = await mailer.connect()
    body = b"Subject: dots\r\n\r\n.leading dot\r\n..two\r\n.\r\nend\r\n"
    await connection.send(body, sender="n@dzaleu.test", recipient="reader@example.org")
    await connection.close()
    [received] = smtp_server.received
    assert received.data.replace(b"\r\n", b"\n").endswith(b".leading dot\n..two\n.\nend\n")


async def test_a_policy_refusal_of_one_recipient_ends_failed_without_a_bounce(
    app: FastAPI, session: AsyncSession, smtp_server: SmtpServer
) -> None:
    app.state.settings.send_max_attempts = 3
    await queue_confirmations(session, app.state.tokens, 2)
    smtp_server.faults.rcpt["reader0@example.org"] = "550 5.7.1 Access denied, banned sender"
    for _ in range(60):
        await drain_outbox(app)
        if (await deliveries(session))[0].status == DeliveryStatus.failed:
            break
        await asyncio.sleep(0.05)
    blocked, other = await deliveries(session)
    assert blocked.status == DeliveryStatus.failed
    assert blocked.attempts == 3
    assert "5.7.1" in (blocked.last_error or "")
    assert other.status == DeliveryStatus.sent
    subscriber = await session.get(Subscriber, blocked.subscriber_id)
    assert subscriber is not None
    assert subscriber.status == SubscriberStatus.pending  # our reputation, not their mailbox


async def test_a_batch_slower_than_its_lease_is_not_sent_twice(
    app: FastAPI, session: AsyncSession, smtp_server: SmtpServer
) -> None:
    """Leases are renewed while a batch is on the wire: a slow send is never taken over."""
    settings = app.state.settings
    settings.send_lease_seconds = 1
    settings.send_batch_size = 10
    # 10 messages at 4/s (a burst of 4, then one every 0.25 s) take ~1.5 s: the next batch,
    # claimed while this one is on the wire, outlives its lease before its turn comes.
    settings.send_rate_per_second = 4
    await queue_confirmations(session, app.state.tokens, 20)
    stop = asyncio.Event()
    task = asyncio.create_task(make_sender(app).run(stop))
    for _ in range(300):
        await asyncio.sleep(0.05)
        if len(received_counts(smtp_server)) == 20:
            break
    await asyncio.sleep(1.0)
    stop.set()
    await task
    counts = received_counts(smtp_server)
    assert len(counts) == 20
    assert set(counts.values()) == {1}


async def test_a_reader_who_leaves_while_the_worker_holds_their_copy_does_not_get_it(
    app: FastAPI, session: AsyncSession, smtp_server: SmtpServer
) -> None:
    from app.outbox import queue as outbox

    settings = app.state.settings
    settings.send_concurrency = 1
    ids = await queue_confirmations(session, app.state.tokens, 30)
    smtp_server.faults.delay_seconds = 0.05  # the batch takes ~1.5 s
    stop = asyncio.Event()
    task = asyncio.create_task(make_sender(app).run(stop))
    for _ in range(100):
        await asyncio.sleep(0.05)
        if received_counts(smtp_server).total() >= 3:
            break
    # The last reader leaves (as unsubscribe, a bounce or an erasure do) while the worker holds
    # the copy.
    await outbox.skip_subscriber_deliveries(session, subscriber_id=ids[-1], why="unsubscribed")
    await session.commit()
    for _ in range(100):
        await asyncio.sleep(0.05)
        if received_counts(smtp_server).total() >= 29:
            break
    await asyncio.sleep(0.3)
    stop.set()
    await task
    counts = received_counts(smtp_server)
    assert "reader29@example.org" not in counts
    assert len(counts) == 29
