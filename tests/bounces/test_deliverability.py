"""Complaints and soft bounces tied to the digests they are about: the complaint breaker, and
SOFT_BOUNCE_LIMIT digests in a row. Real API, real sender, real SMTP server."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.config import Settings
from app.models import (
    BounceEvent,
    Delivery,
    DeliveryKind,
    DeliveryStatus,
    Digest,
    DigestStatus,
    SubscriberEvent,
    SubscriberStatus,
    utcnow,
)
from tests.bounces.test_bounces import WEBHOOK_SECRET, fresh
from tests.conftest import make_settings
from tests.factories import digest_deliveries, drain_outbox, make_sender, make_subscriber
from tests.smtp_server import SmtpServer
from tests.worker.test_adaptive_sending import add_readers, settings_for
from tests.worker.test_send_promises import snapshot, start_digest, truth

HOOK = {"X-Webhook-Secret": WEBHOOK_SECRET}


@pytest.fixture
def settings(database_url: str, smtp_server: SmtpServer, tmp_path: Path) -> Settings:
    return make_settings(database_url, smtp_server, tmp_path, bounce_webhook_secret=WEBHOOK_SECRET)


async def test_a_complaint_flood_trips_the_complaint_breaker(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    smtp_server: SmtpServer,
    editor_headers: dict[str, str],
) -> None:
    settings_for(app)
    total = 600
    addresses = await add_readers(session, app.state.tokens, total)
    digest_id = await start_digest(client, session, editor_headers)
    assert (await make_sender(app).run_batch()).sent == 200
    got_it = [r.rcpt_tos[0] for r in snapshot(smtp_server)]
    # A provider's feedback loop reports 30 of them at once.
    complaints = [
        client.post("/api/v1/bounces", json={"email": a, "type": "complaint"}, headers=HOOK)
        for a in got_it[:30]
    ]
    for chunk in range(0, len(complaints), 10):
        answers = await asyncio.gather(*complaints[chunk : chunk + 10])
        assert {r.status_code for r in answers} == {202}
    state = (await client.get(f"/api/v1/digests/{digest_id}", headers=editor_headers)).json()
    assert state["status"] == "paused", state
    assert state["paused_reason"].startswith("complaint breaker:"), state["paused_reason"]
    assert "SEND_PAUSE_COMPLAINT_RATE" in state["paused_reason"]
    assert state["complaint_rate"] == pytest.approx(30 / 200)
    await drain_outbox(app)  # paused: nothing goes out
    assert len(snapshot(smtp_server)) == 200

    # The editor looked and resumes: what came before does not pause it again.
    resumed = await client.post(f"/api/v1/digests/{digest_id}/resume", headers=editor_headers)
    assert resumed.status_code == 200, resumed.text
    await drain_outbox(app)
    final = (await client.get(f"/api/v1/digests/{digest_id}", headers=editor_headers)).json()
    assert (final["status"], final["sent"]) == ("sent", total), final
    await truth(session, smtp_server, digest_id)  # nothing twice
    assert {r.rcpt_tos[0] for r in snapshot(smtp_server)} == set(addresses)  # nothing lost
    figures = (
        await client.get(f"/api/v1/digests/{digest_id}/deliverability", headers=editor_headers)
    ).json()
    assert (figures["delivered"], figures["complaints"]) == (total, 30)
    assert sum(d["complaints"] for d in figures["domains"]) == 30
    events = (await session.exec(select(BounceEvent))).all()
    assert {e.digest_id for e in events} == {digest_id}


async def test_complaints_under_the_rate_do_not_pause(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    smtp_server: SmtpServer,
    editor_headers: dict[str, str],
) -> None:
    settings_for(app, send_pause_complaint_rate=0.01)
    await add_readers(session, app.state.tokens, 400)
    digest_id = await start_digest(client, session, editor_headers)
    await make_sender(app).run_batch()
    # 4 < 1% of max(200 delivered, SEND_BREAKER_MIN_ATTEMPTS 500) = 5.
    for address in [r.rcpt_tos[0] for r in snapshot(smtp_server)][:4]:
        body = {"email": address, "type": "complaint"}
        assert (await client.post("/api/v1/bounces", json=body, headers=HOOK)).status_code == 202
    state = (await client.get(f"/api/v1/digests/{digest_id}", headers=editor_headers)).json()
    assert (state["status"], state["paused_reason"]) == ("sending", None)


async def _copies(session: AsyncSession, subscriber_id: int, count: int) -> list[int]:
    """`count` sent digests, each with a copy that went out to the subscriber; their ids."""
    ids = []
    for _ in range(count):
        digest = Digest(subject="Hebdo", status=DigestStatus.sent, recipients=1)
        session.add(digest)
        await session.flush()
        assert digest.id is not None
        session.add(
            Delivery(
                kind=DeliveryKind.digest,
                digest_id=digest.id,
                subscriber_id=subscriber_id,
                status=DeliveryStatus.sent,
                sent_at=utcnow(),
            )
        )
        ids.append(digest.id)
    await session.commit()
    return ids


async def _soft(client: httpx.AsyncClient, email: str) -> None:
    body = {"email": email, "type": "soft", "reason": "452 4.2.2 Mailbox full"}
    assert (await client.post("/api/v1/bounces", json=body, headers=HOOK)).status_code == 202


async def test_soft_bounces_on_three_digests_in_a_row_suppress(
    app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
) -> None:
    reader = await make_subscriber(session, app.state.tokens, email="awa@boite-pleine.sn")
    assert reader.id is not None
    _, second = await _copies(session, reader.id, 2)
    await _soft(client, "awa@boite-pleine.sn")  # tied to `second`, the latest copy
    _, fourth = await _copies(session, reader.id, 2)
    await _soft(client, "awa@boite-pleine.sn")  # second, (third delivered), fourth
    assert (await fresh(session, reader.id)).status == SubscriberStatus.confirmed
    (fifth,) = await _copies(session, reader.id, 1)
    await _soft(client, "awa@boite-pleine.sn")  # (third delivered), fourth, fifth
    assert (await fresh(session, reader.id)).status == SubscriberStatus.confirmed
    (sixth,) = await _copies(session, reader.id, 1)
    await _soft(client, "awa@boite-pleine.sn")  # fourth, fifth, sixth: three in a row
    reader = await fresh(session, reader.id)
    assert reader.status == SubscriberStatus.bounced
    events = (await session.exec(select(BounceEvent).order_by(col(BounceEvent.id)))).all()
    assert [e.digest_id for e in events] == [second, fourth, fifth, sixth]
    history = (
        await session.exec(select(SubscriberEvent).where(SubscriberEvent.event == "bounced"))
    ).one()
    assert history.detail is not None
    assert "3 digests in a row" in history.detail
    assert f"digest {sixth}" in history.detail


async def test_a_copy_that_fails_on_4xx_is_a_soft_bounce_on_its_digest(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    smtp_server: SmtpServer,
    editor_headers: dict[str, str],
) -> None:
    settings_for(app, send_max_attempts=1, soft_bounce_limit=1)
    addresses = await add_readers(session, app.state.tokens, 3)
    smtp_server.faults.rcpt[addresses[1]] = "452 4.2.2 Mailbox full"
    digest_id = await start_digest(client, session, editor_headers)
    await drain_outbox(app)
    statuses = Counter(d.status for d in await digest_deliveries(session, digest_id))
    assert statuses == {DeliveryStatus.sent: 2, DeliveryStatus.failed: 1}
    [event] = (await session.exec(select(BounceEvent))).all()
    assert (event.type, event.source, event.digest_id) == ("soft", "smtp", digest_id)
    # SOFT_BOUNCE_LIMIT=1: one digest in a row is enough.
    reader = await fresh(session, event.subscriber_id)
    assert reader.status == SubscriberStatus.bounced
