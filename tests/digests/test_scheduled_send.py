"""A send scheduled for a time (`POST /api/v1/digests/{id}/send` with `at`): the digest stays a
draft until a worker's check finds the time come, and is sent once whatever the number of
workers; unscheduled before then, it stays a draft."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
from fastapi import FastAPI
from sqlmodel import func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.models import AuditEvent, Delivery, Digest
from app.schedules.runner import Scheduler
from tests.factories import Clock, drain_outbox, import_feed_sample, make_subscriber
from tests.smtp_server import SmtpServer

READERS = [f"reader{n}@example.org" for n in range(3)]


async def draft(
    app: FastAPI, client: httpx.AsyncClient, session: AsyncSession, headers: dict[str, str]
) -> int:
    for address in READERS:
        await make_subscriber(session, app.state.tokens, email=address)
    await import_feed_sample(session)
    response = await client.post("/api/v1/digests", json={}, headers=headers)
    assert response.status_code == 201, response.text
    digest_id: int = response.json()["id"]
    return digest_id


def error_fields(response: httpx.Response) -> list[list[str | int]]:
    return [e["loc"] for e in response.json()["detail"]]


async def test_send_at_a_time_keeps_a_draft_until_then(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    editor_headers: dict[str, str],
) -> None:
    digest_id = await draft(app, client, session, editor_headers)
    url = f"/api/v1/digests/{digest_id}"
    at = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    paris_time = at.astimezone(UTC).replace(tzinfo=None).isoformat() + "+01:00"
    response = await client.post(f"{url}/send", json={"at": paris_time}, headers=editor_headers)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "draft"
    assert body["recipients"] == 0
    assert datetime.fromisoformat(body["send_at"]) == at - timedelta(hours=1)
    assert (await client.get(url, headers=editor_headers)).json()["send_at"] == body["send_at"]
    # The audit log tells a scheduled send from a send.
    details = (
        await session.exec(
            select(AuditEvent.detail).where(
                AuditEvent.action == "send", AuditEvent.target_id == str(digest_id)
            )
        )
    ).all()
    assert details == [f"scheduled for {(at - timedelta(hours=1)).isoformat()}"]
    count = select(func.count()).select_from(Delivery).where(Delivery.digest_id == digest_id)
    assert (await session.exec(count)).one() == 0
    # Another time replaces it; unschedule takes it back; the digest stays a draft.
    later = (at + timedelta(hours=2)).isoformat()
    moved = await client.post(f"{url}/send", json={"at": later}, headers=editor_headers)
    assert datetime.fromisoformat(moved.json()["send_at"]) == at + timedelta(hours=2)
    gone = await client.post(f"{url}/unschedule", headers=editor_headers)
    assert gone.status_code == 200
    assert gone.json()["send_at"] is None
    assert gone.json()["status"] == "draft"
    # Sent now: too late to schedule or unschedule (409 with the status).
    assert (await client.post(f"{url}/send", headers=editor_headers)).status_code == 202
    late = await client.post(f"{url}/send", json={"at": later}, headers=editor_headers)
    assert late.status_code == 409
    assert late.json()["status"] == "sending"
    assert (await client.post(f"{url}/unschedule", headers=editor_headers)).status_code == 409
    assert (
        await client.post("/api/v1/digests/999999/unschedule", headers=editor_headers)
    ).status_code == 404


async def test_a_past_naive_or_far_time_is_a_422_naming_at(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    editor_headers: dict[str, str],
) -> None:
    digest_id = await draft(app, client, session, editor_headers)
    url = f"/api/v1/digests/{digest_id}/send"
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    for at in (
        "2020-01-01T07:00:00+01:00",  # past
        tomorrow.replace(tzinfo=None).isoformat(),  # naive: whose 7 o'clock?
        (tomorrow + timedelta(days=400)).isoformat(),  # more than a year ahead
        "9999-12-31T23:59:59-23:59",  # past the last datetime in UTC
        "tomorrow",
    ):
        response = await client.post(url, json={"at": at}, headers=editor_headers)
        assert response.status_code == 422, (at, response.text)
        assert error_fields(response) == [["body", "at"]], at
    unknown = await client.post(url, json={"send_at": tomorrow.isoformat()}, headers=editor_headers)
    assert unknown.status_code == 422
    assert error_fields(unknown) == [["body", "send_at"]]
    digest = await session.get(Digest, digest_id, populate_existing=True)
    assert digest is not None
    assert (digest.status, digest.send_at) == ("draft", None)


async def test_two_workers_racing_on_a_due_digest_send_it_once(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    editor_headers: dict[str, str],
    smtp_server: SmtpServer,
) -> None:
    digest_id = await draft(app, client, session, editor_headers)
    at = datetime.now(UTC) + timedelta(hours=3)
    response = await client.post(
        f"/api/v1/digests/{digest_id}/send", json={"at": at.isoformat()}, headers=editor_headers
    )
    assert response.status_code == 202
    clock = Clock(at - timedelta(seconds=1))
    workers = [
        Scheduler(app.state.settings, app.state.sessionmaker, clock=clock, worker_id=f"w{n}")
        for n in range(4)
    ]
    assert await asyncio.gather(*(w.send_due_digests() for w in workers)) == [[], [], [], []]
    clock.now = at + timedelta(seconds=5)
    results = await asyncio.gather(*(w.send_due_digests() for w in workers))
    assert sorted(results) == [[], [], [], [digest_id]]
    assert await asyncio.gather(*(w.send_due_digests() for w in workers)) == [[], [], [], []]
    digest = await session.get(Digest, digest_id, populate_existing=True)
    assert digest is not None
    assert digest.status == "sending"
    assert digest.recipients == len(READERS)
    assert digest.send_at is None
    await drain_outbox(app)
    for address in READERS:
        assert len(smtp_server.messages_to(address)) == 1


async def test_an_unscheduled_or_cancelled_digest_is_not_sent(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    editor_headers: dict[str, str],
) -> None:
    digest_id = await draft(app, client, session, editor_headers)
    url = f"/api/v1/digests/{digest_id}"
    at = datetime.now(UTC) + timedelta(hours=1)
    await client.post(f"{url}/send", json={"at": at.isoformat()}, headers=editor_headers)
    assert (await client.post(f"{url}/unschedule", headers=editor_headers)).status_code == 200
    worker = Scheduler(
        app.state.settings, app.state.sessionmaker, clock=Clock(at + timedelta(minutes=1))
    )
    assert await worker.send_due_digests() == []
    await client.post(f"{url}/send", json={"at": at.isoformat()}, headers=editor_headers)
    assert (await client.post(f"{url}/cancel", headers=editor_headers)).status_code == 200
    assert await worker.send_due_digests() == []
    digest = await session.get(Digest, digest_id, populate_existing=True)
    assert digest is not None
    assert digest.status == "cancelled"
    assert digest.recipients == 0
