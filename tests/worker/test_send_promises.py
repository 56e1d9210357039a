"""Promises that broke when the service was tried from outside, at full speed:

- pause, cancel and unsubscribe mean now: after the answer, nothing more starts for that digest or
  that reader (only messages already in their SMTP exchange finish, at most SEND_CONCURRENCY);
- a delivery's status tells the truth about the wire: a message that went out is `sent`;
- a relay that refuses every recipient pauses the send and suppresses nobody.

Each test runs the real sender (`Sender.run`) against a real SMTP server, on SQLite and on
PostgreSQL (LISTEN/NOTIFY there, the in-process bus on SQLite).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import sqlalchemy as sa
from fastapi import FastAPI
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.articles import service as articles
from app.models import Delivery, DeliveryKind, DeliveryStatus, Subscriber, SubscriberStatus
from app.security import Tokens
from tests.factories import digest_deliveries, drain_outbox, make_sender
from tests.smtp_server import Received, SmtpServer

SAMPLE = Path(__file__).parents[1] / "data" / "wordpress-feed-fr.xml"
CONCURRENCY = 4
# The SMTP server notes an exchange's start when it reads MAIL FROM, a little after the worker
# wrote it; and on PostgreSQL a worker hears a NOTIFY a few milliseconds after the commit.
HEARD_WITHIN = 0.05
_DELIVERY_OF = re.compile(rb"Message-ID: <nl\.(\d+)\.", re.IGNORECASE)


async def add_readers(session: AsyncSession, tokens: Tokens, count: int) -> list[int]:
    """`count` confirmed readers, in one statement; their ids."""
    now = sa.func.now() if session.get_bind().dialect.name == "postgresql" else sa.func.datetime()
    rows = [
        {
            "email": f"reader{i}@example.org",
            "email_hash": tokens.email_hash(f"reader{i}@example.org"),
            "name": f"Lecteur {i}",
            "language": "fr",
            "status": "confirmed",
        }
        for i in range(count)
    ]
    table = Subscriber.__table__  # type: ignore[attr-defined]
    await session.execute(sa.insert(table).values(created_at=now, updated_at=now), rows)
    await session.commit()
    ids = (await session.exec(select(Subscriber.id).order_by(col(Subscriber.id)))).all()
    return [i for i in ids if i is not None]


async def start_digest(
    client: httpx.AsyncClient, session: AsyncSession, headers: dict[str, str]
) -> int:
    await articles.import_feed_document(session, data=SAMPLE.read_bytes())
    await session.commit()
    created = await client.post("/api/v1/digests", json={}, headers=headers)
    assert created.status_code == 201, created.text
    digest_id = int(created.json()["id"])
    sent = await client.post(f"/api/v1/digests/{digest_id}/send", headers=headers)
    assert sent.status_code == 202, sent.text
    return digest_id


def delivery_id(received: Received) -> int:
    match = _DELIVERY_OF.search(received.data)
    assert match, received.data[:500]
    return int(match.group(1))


def snapshot(smtp_server: SmtpServer) -> list[Received]:
    with smtp_server.lock:
        return list(smtp_server.received)


async def wait_for(condition: Callable[[], bool], *, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def truth(session: AsyncSession, smtp_server: SmtpServer, digest_id: int) -> None:
    """Every copy the SMTP server accepted is recorded `sent`, and no other."""
    received = Counter(delivery_id(r) for r in snapshot(smtp_server))
    assert set(received.values()) <= {1}, "a copy went out twice"
    rows = await digest_deliveries(session, digest_id)
    sent = {d.id for d in rows if d.status == DeliveryStatus.sent and d.id is not None}
    assert sent == set(received), {
        "went out but not recorded sent": sorted(set(received) - sent)[:10],
        "recorded sent but never went out": sorted(sent - set(received))[:10],
    }


def stopped_at_once(received: list[Received], answered_at: float) -> None:
    """After the answer, nothing new began once the worker could hear of it; what went out
    after the answer was already in its exchange (one per connection) or began in that
    instant."""
    began_later = [r for r in received if r.started > answered_at + HEARD_WITHIN]
    assert began_later == [], f"{len(began_later)} copies began after the answer"
    in_the_instant = [r for r in received if answered_at < r.started <= answered_at + HEARD_WITHIN]
    accepted_after = [r for r in received if r.finished > answered_at]
    assert len(accepted_after) <= CONCURRENCY + len(in_the_instant), (
        f"{len(accepted_after)} copies accepted after the answer"
    )


def fast_settings(app: FastAPI) -> None:
    settings = app.state.settings
    settings.send_concurrency = CONCURRENCY
    settings.send_batch_size = 200
    settings.send_rate_per_second = 0


async def test_pause_at_full_speed_stops_at_once_and_resume_finishes(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    smtp_server: SmtpServer,
    editor_headers: dict[str, str],
) -> None:
    fast_settings(app)
    await add_readers(session, app.state.tokens, 1500)
    digest_id = await start_digest(client, session, editor_headers)
    stop = asyncio.Event()
    worker = asyncio.create_task(make_sender(app).run(stop))
    try:
        await wait_for(lambda: len(snapshot(smtp_server)) >= 250)
        paused = await client.post(f"/api/v1/digests/{digest_id}/pause", headers=editor_headers)
        answered_at = time.monotonic()
        assert paused.status_code == 200, paused.text
        await asyncio.sleep(1.0)
        stopped_at_once(snapshot(smtp_server), answered_at)
    finally:
        stop.set()
        await worker
    await truth(session, smtp_server, digest_id)
    statuses = Counter(d.status for d in await digest_deliveries(session, digest_id))
    assert set(statuses) == {DeliveryStatus.sent, DeliveryStatus.queued}, statuses

    resumed = await client.post(f"/api/v1/digests/{digest_id}/resume", headers=editor_headers)
    assert resumed.status_code == 200, resumed.text
    await drain_outbox(app, max_batches=50)
    await truth(session, smtp_server, digest_id)
    assert len(snapshot(smtp_server)) == 1500


async def test_cancel_at_full_speed_sends_nothing_more_and_tells_the_truth(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    smtp_server: SmtpServer,
    editor_headers: dict[str, str],
) -> None:
    fast_settings(app)
    await add_readers(session, app.state.tokens, 1500)
    digest_id = await start_digest(client, session, editor_headers)
    stop = asyncio.Event()
    worker = asyncio.create_task(make_sender(app).run(stop))
    try:
        await wait_for(lambda: len(snapshot(smtp_server)) >= 250)
        cancelled = await client.post(f"/api/v1/digests/{digest_id}/cancel", headers=editor_headers)
        answered_at = time.monotonic()
        assert cancelled.status_code == 200, cancelled.text
        await asyncio.sleep(1.0)
        stopped_at_once(snapshot(smtp_server), answered_at)
    finally:
        stop.set()
        await worker
    await truth(session, smtp_server, digest_id)
    statuses = Counter(d.status for d in await digest_deliveries(session, digest_id))
    assert set(statuses) == {DeliveryStatus.sent, DeliveryStatus.skipped}, statuses
    assert statuses[DeliveryStatus.sent] == len(snapshot(smtp_server))


async def test_readers_who_unsubscribe_mid_send_get_nothing_after_the_answer(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    smtp_server: SmtpServer,
    editor_headers: dict[str, str],
) -> None:
    fast_settings(app)
    tokens: Tokens = app.state.tokens
    ids = await add_readers(session, tokens, 1200)
    digest_id = await start_digest(client, session, editor_headers)
    hashes = dict(
        (await session.execute(sa.select(col(Subscriber.id), col(Subscriber.email_hash)))).all()
    )
    leaving = ids[300::8][:120]  # spread over the rest of the send
    stop = asyncio.Event()
    worker = asyncio.create_task(make_sender(app).run(stop))
    answered: dict[str, float] = {}
    try:
        await wait_for(lambda: len(snapshot(smtp_server)) >= 200)
        for subscriber_id in leaving:
            token = tokens.unsubscribe_token(subscriber_id, hashes[subscriber_id])
            response = await client.post(
                f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"}
            )
            assert response.status_code == 200, response.text
            answered[f"reader{ids.index(subscriber_id)}@example.org"] = time.monotonic()
        await wait_for(lambda: _delivered_all(session, smtp_server, 1200 - len(leaving)))
    finally:
        stop.set()
        await worker
    late = [
        r.rcpt_tos[0]
        for r in snapshot(smtp_server)
        if r.rcpt_tos[0] in answered and r.started > answered[r.rcpt_tos[0]] + HEARD_WITHIN
    ]
    assert late == [], f"{len(late)} readers were mailed after their unsubscribe was answered"
    await truth(session, smtp_server, digest_id)
    rows = {d.subscriber_id: d for d in await digest_deliveries(session, digest_id)}
    got = {r.rcpt_tos[0] for r in snapshot(smtp_server)}
    for subscriber_id in leaving:
        address = f"reader{ids.index(subscriber_id)}@example.org"
        expected = DeliveryStatus.sent if address in got else DeliveryStatus.skipped
        assert rows[subscriber_id].status == expected, address


def _delivered_all(session: AsyncSession, smtp_server: SmtpServer, at_least: int) -> bool:
    return len(snapshot(smtp_server)) >= at_least


async def test_a_relay_that_refuses_everyone_pauses_the_send_and_bounces_nobody(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    smtp_server: SmtpServer,
    editor_headers: dict[str, str],
) -> None:
    fast_settings(app)
    await add_readers(session, app.state.tokens, 600)
    digest_id = await start_digest(client, session, editor_headers)
    # What Postfix answers when its recipient table is incomplete.
    smtp_server.faults.rcpt_all = (
        "550 5.1.1 <x>: Recipient address rejected: User unknown in virtual mailbox table"
    )
    await drain_outbox(app, max_batches=20)
    state = (await client.get(f"/api/v1/digests/{digest_id}", headers=editor_headers)).json()
    assert state["status"] == "paused", state
    assert "refused" in state["paused_reason"]
    assert "nobody was marked bounced" in state["paused_reason"]
    session.expire_all()
    statuses = Counter((await session.exec(select(Subscriber.status))).all())
    assert statuses == {SubscriberStatus.confirmed: 600}, statuses
    rows = await digest_deliveries(session, digest_id)
    assert {d.status for d in rows} == {DeliveryStatus.queued}
    assert all(d.attempts == 0 for d in rows)

    # The relay is fixed; the editor resumes: every reader gets the digest, once.
    smtp_server.faults.rcpt_all = None
    resumed = await client.post(f"/api/v1/digests/{digest_id}/resume", headers=editor_headers)
    assert resumed.status_code == 200, resumed.text
    await drain_outbox(app, max_batches=20)
    received = Counter(r.rcpt_tos[0] for r in snapshot(smtp_server))
    assert len(received) == 600
    assert set(received.values()) == {1}
    final = (await client.get(f"/api/v1/digests/{digest_id}", headers=editor_headers)).json()
    assert (final["status"], final["sent"]) == ("sent", 600)


async def test_real_hard_bounces_among_deliveries_still_suppress(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    smtp_server: SmtpServer,
    editor_headers: dict[str, str],
) -> None:
    fast_settings(app)
    await add_readers(session, app.state.tokens, 400)
    digest_id = await start_digest(client, session, editor_headers)
    dead = {f"reader{i}@example.org" for i in (3, 150, 399)}
    for address in dead:
        smtp_server.faults.rcpt[address] = f"550 5.1.1 <{address}>: No such user"
    await drain_outbox(app, max_batches=20)
    session.expire_all()
    bounced = (
        await session.exec(select(Subscriber.email).where(Subscriber.status == "bounced"))
    ).all()
    assert set(bounced) == dead
    final = (await client.get(f"/api/v1/digests/{digest_id}", headers=editor_headers)).json()
    assert (final["status"], final["sent"], final["failed"]) == ("sent", 397, 3)
    confirmation_rows = (
        await session.exec(select(Delivery).where(Delivery.kind == DeliveryKind.confirmation))
    ).all()
    assert confirmation_rows == []
