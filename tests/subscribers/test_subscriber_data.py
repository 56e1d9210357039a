"""Subscriber data for editors: list and search, access (everything held), erasure."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.models import (
    BounceEvent,
    Delivery,
    DeliveryKind,
    DeliveryStatus,
    Subscriber,
    SubscriberEvent,
    SubscriberStatus,
    utcnow,
)
from app.subscribers.service import subscriber_by_email
from tests.factories import drain_outbox, editor_headers, link_in, make_subscriber
from tests.smtp_server import SmtpServer

READERS = [
    ("amelie.kone@example.org", "Amélie Koné", SubscriberStatus.confirmed),
    ("jean-pierre.ndongo@example.cm", "Jean-Pierre Ndongo", SubscriberStatus.confirmed),
    ("AMINA.BELLO@example.ng", "Amina Bello", SubscriberStatus.pending),
    ("marc.dupont@example.fr", "Marc Dupont", SubscriberStatus.unsubscribed),
    ("100%_sure@example.org", None, SubscriberStatus.bounced),
]


@pytest.fixture
async def headers(session: AsyncSession) -> dict[str, str]:
    return await editor_headers(session)


async def signed_up(
    client: httpx.AsyncClient, app: FastAPI, smtp: SmtpServer, email: str, name: str = "Awa Sow"
) -> None:
    """A reader signs up through the form and confirms through the emailed link."""
    response = await client.post(
        "/subscribe",
        data={"email": email, "name": name},
        headers={"user-agent": "Mozilla/5.0 (Android 14) Firefox/132.0"},
    )
    assert response.status_code == 200
    await drain_outbox(app)
    [message] = smtp.messages_to(email)
    assert (await client.post(link_in(message, "confirm"))).status_code == 200


async def test_list_filters_searches_and_paginates(
    client: httpx.AsyncClient, app: FastAPI, session: AsyncSession, headers: dict[str, str]
) -> None:
    for email, name, status in READERS:
        await make_subscriber(session, app.state.tokens, email=email, name=name, status=status)

    everyone = (await client.get("/api/v1/subscribers", headers=headers)).json()
    assert everyone["total"] == 5
    assert everyone["items"][0]["email"] == "100%_sure@example.org"  # newest first
    assert set(everyone["items"][0]) == {
        "email",
        "name",
        "language",
        "cadence",
        "topics",
        "status",
        "created_at",
        "confirmed_at",
        "unsubscribed_at",
        "bounced_at",
        "erased_at",
    }  # no hashes, no consent IP in a list

    confirmed = await client.get("/api/v1/subscribers?status=confirmed", headers=headers)
    assert confirmed.json()["total"] == 2

    by_name = await client.get("/api/v1/subscribers", params={"q": "KONÉ"}, headers=headers)
    assert [s["email"] for s in by_name.json()["items"]] == ["amelie.kone@example.org"]
    by_email = await client.get("/api/v1/subscribers", params={"q": "amina.b"}, headers=headers)
    assert [s["name"] for s in by_email.json()["items"]] == ["Amina Bello"]
    # LIKE wildcards are literal: "%_" matches only the address that contains them.
    literal = await client.get("/api/v1/subscribers", params={"q": "%_"}, headers=headers)
    assert literal.json()["total"] == 1

    page = await client.get("/api/v1/subscribers?limit=2&offset=2", headers=headers)
    body = page.json()
    assert (body["total"], body["limit"], body["offset"], len(body["items"])) == (5, 2, 2, 2)

    assert (await client.get("/api/v1/subscribers?status=gone", headers=headers)).status_code == 422
    assert (await client.get("/api/v1/subscribers?limit=0", headers=headers)).status_code == 422
    assert (await client.get("/api/v1/subscribers")).status_code == 401


async def test_access_returns_everything_held(
    client: httpx.AsyncClient,
    app: FastAPI,
    session: AsyncSession,
    smtp_server: SmtpServer,
    headers: dict[str, str],
) -> None:
    await signed_up(client, app, smtp_server, "awa.sow@example.sn")
    bounce = await client.post(
        "/api/v1/bounces",
        json={"email": "awa.sow@example.sn", "type": "soft", "reason": "452 4.2.2 Mailbox full"},
        headers=headers,
    )
    assert bounce.status_code == 202

    response = await client.get("/api/v1/subscribers/Awa.Sow@Example.SN", headers=headers)
    assert response.status_code == 200
    record = response.json()
    assert record["subscriber"]["email"] == "awa.sow@example.sn"
    assert record["subscriber"]["status"] == "confirmed"
    assert record["consent"]["ip"] == "203.0.113.7"
    assert record["consent"]["user_agent"] == "Mozilla/5.0 (Android 14) Firefox/132.0"
    assert record["consent"]["source"] == "form"
    assert record["consent"]["language"] == "fr"
    assert record["consent"]["at"].endswith("Z")  # UTC, on both backends
    assert [e["event"] for e in record["history"]] == ["signup", "confirmed", "soft_bounce"]
    [delivery] = record["deliveries"]
    assert delivery["kind"] == "confirmation"
    assert delivery["status"] == "sent"
    assert delivery["message_id"].startswith("<nl.")
    [bounce_record] = record["bounces"]
    assert bounce_record == {
        "at": bounce_record["at"],
        "type": "soft",
        "reason": "452 4.2.2 Mailbox full",
        "source": "api",
    }
    text = response.text
    assert "email_hash" not in text
    assert "token" not in text

    missing = await client.get("/api/v1/subscribers/nobody@example.org", headers=headers)
    assert missing.status_code == 404
    assert "nobody@example.org" in missing.json()["detail"]
    garbage = await client.get("/api/v1/subscribers/not-an-address", headers=headers)
    assert garbage.status_code == 404


async def test_erase_then_old_link_then_signup_again(
    client: httpx.AsyncClient,
    app: FastAPI,
    session: AsyncSession,
    smtp_server: SmtpServer,
    headers: dict[str, str],
) -> None:
    tokens = app.state.tokens
    subscriber = await make_subscriber(
        session, tokens, email="ibrahim.diop@example.sn", name="Ibrahim Diop"
    )
    subscriber_id = subscriber.id
    assert subscriber_id is not None
    email_hash = subscriber.email_hash
    unsubscribe_link = f"/unsubscribe/{tokens.unsubscribe_token(subscriber_id, email_hash)}"
    subscriber.consent_ip = "198.51.100.23"
    subscriber.consent_user_agent = "Mozilla/5.0"
    session.add(subscriber)
    session.add(
        BounceEvent(
            subscriber_id=subscriber_id,
            type="soft",
            reason="452 4.2.2 <ibrahim.diop@example.sn>: mailbox full",
            created_at=utcnow() - timedelta(days=3),
        )
    )
    session.add(
        SubscriberEvent(
            subscriber_id=subscriber_id,
            event="soft_bounce",
            detail="api: 452 4.2.2 <ibrahim.diop@example.sn>: mailbox full",
        )
    )
    queued = Delivery(
        kind=DeliveryKind.confirmation,
        subscriber_id=subscriber_id,
        created_at=utcnow() - timedelta(hours=2),
    )
    session.add(queued)
    await session.commit()
    queued_id = queued.id

    erased = await client.delete("/api/v1/subscribers/ibrahim.diop@example.sn", headers=headers)
    assert erased.status_code == 204
    again = await client.delete("/api/v1/subscribers/ibrahim.diop@example.sn", headers=headers)
    assert again.status_code == 204  # idempotent
    missing = await client.delete("/api/v1/subscribers/nobody@example.org", headers=headers)
    assert missing.status_code == 404

    await session.rollback()
    session.expire_all()
    row = await session.get(Subscriber, subscriber_id)
    assert row is not None
    assert (row.email, row.name, row.consent_ip, row.consent_user_agent) == (None, None, None, None)
    assert row.email_hash == email_hash  # suppression holds
    assert row.status == SubscriberStatus.unsubscribed
    assert row.erased_at is not None
    everything = " ".join(
        str(v)
        for v in [
            *(await session.exec(select(SubscriberEvent.detail))).all(),
            *(await session.exec(select(BounceEvent.reason))).all(),
            *(await session.exec(select(Delivery.last_error))).all(),
        ]
    )
    assert "ibrahim" not in everything
    delivery = await session.get(Delivery, queued_id)
    assert delivery is not None
    assert delivery.status == DeliveryStatus.skipped
    listing = await client.get("/api/v1/subscribers", headers=headers)
    assert listing.json()["total"] == 0
    # Access after erasure: nothing is held to give (a GET after the DELETE is a 404); the
    # answer says when the address was erased.
    access = await client.get("/api/v1/subscribers/ibrahim.diop@example.sn", headers=headers)
    assert access.status_code == 404
    assert access.json()["detail"].startswith("the address was erased on ")
    assert row.erased_at is not None
    events = (
        await session.exec(
            select(SubscriberEvent.event).where(SubscriberEvent.subscriber_id == row.id)
        )
    ).all()
    assert events[-1] == "erased"

    # A link in an old email still works and changes nothing that matters.
    assert (await client.get(unsubscribe_link)).status_code == 200
    assert (await client.post(unsubscribe_link)).status_code == 200

    # Signing up again is a new double opt-in, with the address stored again.
    await signed_up(client, app, smtp_server, "ibrahim.diop@example.sn", "Ibrahim Diop")
    await session.rollback()
    session.expire_all()
    row = await session.get(Subscriber, subscriber_id)
    assert row is not None
    assert row.email == "ibrahim.diop@example.sn"
    assert row.status == SubscriberStatus.confirmed
    assert row.erased_at is None
    events = (
        await session.exec(
            select(SubscriberEvent.event)
            .where(SubscriberEvent.subscriber_id == subscriber_id)
            .order_by(col(SubscriberEvent.id))
        )
    ).all()
    assert events[-3:] == ["erased", "resignup", "confirmed"]


async def test_erasing_a_bounced_address_keeps_it_bounced(
    client: httpx.AsyncClient, app: FastAPI, session: AsyncSession, headers: dict[str, str]
) -> None:
    subscriber = await make_subscriber(
        session, app.state.tokens, email="old@example.org", status=SubscriberStatus.bounced
    )
    subscriber_id = subscriber.id
    assert (
        await client.delete("/api/v1/subscribers/old@example.org", headers=headers)
    ).status_code == 204
    await session.rollback()
    session.expire_all()
    row = await session.get(Subscriber, subscriber_id)
    assert row is not None
    assert row.status == SubscriberStatus.bounced
    # A bounce reported for an erased address stores nothing new.
    bounce = await client.post(
        "/api/v1/bounces", json={"email": "old@example.org", "type": "hard"}, headers=headers
    )
    assert bounce.status_code == 202
    assert (await session.exec(select(BounceEvent))).all() == []


async def test_one_lookup_by_address_for_every_caller(app: FastAPI, session: AsyncSession) -> None:
    """`subscriber_by_email` serves editors (who see erased rows: erasure, access) and bounce
    matching (which must not store a fresh reason for an erased person)."""
    tokens = app.state.tokens
    amina = await make_subscriber(session, tokens, email="amina.bello@example.ng")
    erased = await make_subscriber(session, tokens, email="gone@example.org")
    erased.email = None
    erased.erased_at = utcnow()
    session.add(erased)
    await session.commit()

    async def lookup(email: str, *, include_erased: bool) -> int | None:
        found = await subscriber_by_email(
            session, tokens=tokens, email=email, include_erased=include_erased
        )
        return found.id if found is not None else None

    for include_erased in (True, False):
        assert await lookup(" Amina.Bello@EXAMPLE.ng ", include_erased=include_erased) == amina.id
        assert await lookup("nobody@example.org", include_erased=include_erased) is None
        assert await lookup("not an address", include_erased=include_erased) is None
    assert await lookup("gone@example.org", include_erased=True) == erased.id
    assert await lookup("gone@example.org", include_erased=False) is None


async def test_openapi_documents_the_editor_endpoints(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    assert {"/api/v1/subscribers", "/api/v1/subscribers/{email}", "/api/v1/bounces"} <= set(
        schema["paths"]
    )
