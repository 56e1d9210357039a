"""The alert webhook: one POST per incident, through the same SSRF guard as feed imports."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi import FastAPI
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.alerts import service as alerts
from app.alerts import telling
from app.alerts.telling import tell_once
from app.models import AlertIncident, WebhookStatus


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, object]]]]:
    received: list[dict[str, object]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/hook", received
    finally:
        httpd.shutdown()
        httpd.server_close()


async def incident(session: AsyncSession) -> AlertIncident:
    session.expire_all()
    return (await session.exec(select(AlertIncident))).one()


async def test_the_webhook_gets_one_post_per_incident(
    app: FastAPI, session: AsyncSession, receiver: tuple[str, list[dict[str, object]]]
) -> None:
    url, received = receiver
    settings = app.state.settings
    settings.alert_webhook_url = url
    settings.feed_allow_private_networks = True  # the receiver is on loopback
    settings.default_language = "en"
    await alerts.send_paused(session, digest_id=7, reason="relay refuses everyone")
    await session.commit()
    for _ in range(3):
        await tell_once(settings, app.state.sessionmaker)
    assert len(received) == 1
    assert received[0]["incident"] == "send:7:paused"
    assert received[0]["subject"] == "[Dzaleu] Send 7 paused"
    assert "relay refuses everyone" in str(received[0]["text"])
    assert (await incident(session)).webhook_status == WebhookStatus.sent


async def test_a_webhook_into_the_private_network_is_refused(
    app: FastAPI,
    session: AsyncSession,
    receiver: tuple[str, list[dict[str, object]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, received = receiver
    settings = app.state.settings
    settings.alert_webhook_url = url  # loopback, FEED_ALLOW_PRIVATE_NETWORKS off
    monkeypatch.setattr(telling, "WEBHOOK_RETRY_SECONDS", 0.0)  # no backoff in the test
    await alerts.send_paused(session, digest_id=8, reason="x")
    await session.commit()
    for _ in range(6):
        await tell_once(settings, app.state.sessionmaker)
    assert received == []
    row = await incident(session)
    assert row.webhook_status == WebhookStatus.failed
    assert row.webhook_attempts == 5
    assert "not allowed" in (row.webhook_error or "")


async def test_a_post_under_way_is_not_made_again_by_another_worker(
    app: FastAPI, session: AsyncSession, receiver: tuple[str, list[dict[str, object]]]
) -> None:
    url, received = receiver
    settings = app.state.settings
    settings.alert_webhook_url = url
    settings.feed_allow_private_networks = True
    await alerts.send_paused(session, digest_id=9, reason="x")
    await session.commit()
    await alerts.tell_pending(session, settings=settings)
    await session.commit()
    # Two workers at once: one claims and posts, the other finds it held.
    posted = await asyncio.gather(
        *(telling.post_webhooks(settings, app.state.sessionmaker) for _ in range(2))
    )
    assert sorted(posted) == [0, 1]
    assert len(received) == 1
