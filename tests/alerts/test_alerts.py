"""Alerts: a send that pauses itself tells the editors once, through the outbox, whatever the
number of workers; conditions raised again while open tell nobody again."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.alerts import service as alerts
from app.alerts.telling import tell_once
from app.articles.polling import poll_feed_once
from app.background import run_background
from app.digests.delivery import DigestKind
from app.models import AlertIncident, Delivery, DeliveryKind, Feed
from tests.factories import cli_env, drain_outbox, run_cli
from tests.smtp_server import Received, SmtpServer
from tests.worker.test_send_promises import add_readers, snapshot, start_digest, wait_for

EDITORS = ["redaction@dzaleu.test", "Chef@Dzaleu.test"]


def alerts_received(smtp_server: SmtpServer) -> list[Received]:
    editors = {e.lower() for e in EDITORS}
    return [r for r in snapshot(smtp_server) if r.rcpt_tos[0].lower() in editors]


def alerts_received_by(smtp_server: SmtpServer, address: str) -> list[Received]:
    return [r for r in snapshot(smtp_server) if r.rcpt_tos[0] == address]


async def digest_status(client: httpx.AsyncClient, headers: dict[str, str], digest_id: int) -> str:
    answer = await client.get(f"/api/v1/digests/{digest_id}", headers=headers)
    return str(answer.json()["status"])


async def test_a_send_that_pauses_itself_tells_the_editors_once_even_with_two_workers(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    smtp_server: SmtpServer,
    editor_headers: dict[str, str],
) -> None:
    settings = app.state.settings
    settings.alert_emails = ",".join(EDITORS)
    settings.send_batch_size = 20
    settings.send_refusal_sample = 20
    await add_readers(session, app.state.tokens, 120)
    # The relay refuses every reader (an incomplete recipient table), not the editors.
    for i in range(120):
        address = f"reader{i}@example.org"
        smtp_server.faults.rcpt[address] = f"550 5.1.1 <{address}>: User unknown"
    digest_id = await start_digest(client, session, editor_headers)

    stop = asyncio.Event()
    workers = [
        asyncio.create_task(
            run_background(
                settings, app.state.sessionmaker, app.state.mailer, app.state.tokens, stop
            )
        )
        for _ in range(2)
    ]
    try:
        await wait_for(lambda: len(alerts_received(smtp_server)) >= len(EDITORS))
        assert await digest_status(client, editor_headers, digest_id) == "paused"
        # Both workers keep running, polling and telling, for a few rounds: nothing more comes.
        await asyncio.sleep(5)
        received = alerts_received(smtp_server)
        assert sorted(r.rcpt_tos[0].lower() for r in received) == sorted(e.lower() for e in EDITORS)
        message = received[0].message
        assert message.get_content_type() == "multipart/alternative"
        assert message.get_body(("plain",)) is not None
        assert message["Message-ID"]
        assert f"Envoi {digest_id} mis en pause" in str(message["Subject"])  # DEFAULT_LANGUAGE fr
        assert "Dzaleu" in str(message["Subject"])
        text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        assert f"/api/v1/digests/{digest_id}/resume" in text
        assert "refus" in text.lower()

        # Resumed with the relay still broken: it pauses again, a new incident, told again.
        resumed = await client.post(f"/api/v1/digests/{digest_id}/resume", headers=editor_headers)
        assert resumed.status_code == 200, resumed.text
        await wait_for(lambda: len(alerts_received(smtp_server)) >= 2 * len(EDITORS))
        await asyncio.sleep(3)
        assert len(alerts_received(smtp_server)) == 2 * len(EDITORS)
    finally:
        stop.set()
        await asyncio.gather(*workers)
    session.expire_all()
    incidents = (await session.exec(select(AlertIncident))).all()
    assert [(i.key, i.times_opened) for i in incidents] == [(f"send:{digest_id}:paused", 2)]


async def test_a_relay_refusing_every_mail_from_pauses_and_one_alert_goes_once_it_is_fixed(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    smtp_server: SmtpServer,
    editor_headers: dict[str, str],
) -> None:
    """The relay refuses our sender (553): the send pauses; the alert waits in the outbox with
    the rest (that is what ALERT_WEBHOOK_URL is for), and goes out once, when the relay is
    fixed, though two workers saw the failures."""
    settings = app.state.settings
    settings.alert_emails = "redaction@dzaleu.test"
    settings.send_pause_after_permanent_errors = 3
    await add_readers(session, app.state.tokens, 30)
    smtp_server.faults.mail_from = "553 5.7.1 Sender address rejected: not owned by user"
    digest_id = await start_digest(client, session, editor_headers)
    stop = asyncio.Event()
    workers = [
        asyncio.create_task(
            run_background(
                settings, app.state.sessionmaker, app.state.mailer, app.state.tokens, stop
            )
        )
        for _ in range(2)
    ]

    async def alert_rows() -> int:
        session.expire_all()
        rows = await session.exec(select(Delivery).where(Delivery.kind == DeliveryKind.alert))
        return len(rows.all())

    try:
        for _ in range(1500):
            if await alert_rows():
                break
            await asyncio.sleep(0.02)
        assert await digest_status(client, editor_headers, digest_id) == "paused"
        assert alerts_received(smtp_server) == []
        smtp_server.faults.mail_from = None  # the relay is fixed
        await wait_for(lambda: len(alerts_received_by(smtp_server, "redaction@dzaleu.test")) > 0)
        await asyncio.sleep(3)  # both workers keep going a few rounds
    finally:
        stop.set()
        await asyncio.gather(*workers)
    assert len(alerts_received_by(smtp_server, "redaction@dzaleu.test")) == 1
    assert await alert_rows() == 1
    # The paused send stayed paused: only the alert went out.
    assert len(snapshot(smtp_server)) == 1


async def test_an_open_condition_raised_again_tells_nobody_again(
    app: FastAPI, session: AsyncSession
) -> None:
    app.state.settings.alert_emails = "redaction@dzaleu.test"
    slot = datetime(2026, 11, 29, 7, 0, tzinfo=UTC)
    for _ in range(3):
        await alerts.schedule_run_failed(
            session, schedule_id=4, name="Matin", slot=slot, error="no articles table"
        )
        await session.commit()
        await tell_once(app.state.settings, app.state.sessionmaker)
    rows = (await session.exec(select(Delivery).where(Delivery.kind == DeliveryKind.alert))).all()
    assert len(rows) == 1
    await alerts.schedule_run_succeeded(session, schedule_id=4)
    assert await alerts.schedule_run_failed(
        session, schedule_id=4, name="Matin", slot=slot, error="again"
    )
    await session.commit()
    await tell_once(app.state.settings, app.state.sessionmaker)
    session.expire_all()
    rows = (await session.exec(select(Delivery).where(Delivery.kind == DeliveryKind.alert))).all()
    assert len(rows) == 2


@pytest.mark.parametrize("failures", [1, 2, 3, 4])
async def test_the_feed_alerts_from_the_nth_failure_in_a_row(
    app: FastAPI, session: AsyncSession, failures: int
) -> None:
    settings = app.state.settings
    settings.alert_feed_failures = 3
    told = await alerts.feed_failed(
        session, settings=settings, url="https://example.org/feed", failures=failures, error="x"
    )
    await session.commit()
    assert told == (failures >= 3)
    keys = (await session.exec(select(col(AlertIncident.key)))).all()
    assert len(keys) == (1 if failures >= 3 else 0)


async def test_a_bounce_rate_past_the_warning_line_tells_once(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    smtp_server: SmtpServer,
    editor_headers: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(DigestKind, "bounce_rate_every", 0.0)  # look after every bounce
    settings = app.state.settings
    settings.alert_emails = "redaction@dzaleu.test"
    settings.default_language = "en"
    settings.alert_bounce_min_attempts = 50
    settings.alert_bounce_rate = 0.05
    await add_readers(session, app.state.tokens, 100)
    for i in range(0, 100, 10):  # 10% of the list is dead
        smtp_server.faults.rcpt[f"reader{i}@example.org"] = "550 5.1.1 No such user"
    digest_id = await start_digest(client, session, editor_headers)
    await drain_outbox(app)
    await tell_once(settings, app.state.sessionmaker)
    await drain_outbox(app)
    received = alerts_received_by(smtp_server, "redaction@dzaleu.test")
    assert len(received) == 1
    # Told when the rate first crossed the line (about 1 in 19 once the first 50 were tried).
    subject = str(received[0].message["Subject"])
    assert subject.startswith(f"[Dzaleu] Send {digest_id}: ")
    assert subject.endswith("% bounced")
    assert float(subject.split(": ")[1].split("%")[0]) > 5.0
    session.expire_all()
    incidents = (await session.exec(select(AlertIncident))).all()
    assert [i.key for i in incidents] == [f"send:{digest_id}:bounce_rate"]


async def test_a_feed_failing_n_polls_in_a_row_tells_once_until_it_recovers(
    app: FastAPI, session: AsyncSession
) -> None:
    settings = app.state.settings
    settings.alert_feed_failures = 3
    url = "http://127.0.0.1:1/feed.xml"  # loopback: refused by the SSRF guard, a failed poll
    for _ in range(5):
        await session.execute(sa.update(Feed).values(last_polled_at=None))
        await session.commit()
        assert await poll_feed_once(settings, app.state.sessionmaker, url=url) is None
    session.expire_all()
    feed = (await session.exec(select(Feed))).one()
    assert feed.failures == 5
    incident = (await session.exec(select(AlertIncident))).one()
    assert (incident.kind, incident.params["failures"], incident.times_opened) == (
        "feed_failing",
        3,
        1,
    )


async def test_a_sender_that_refuses_to_start_for_its_dkim_key_tells_the_editors(
    app: FastAPI, session: AsyncSession, tmp_path: Path
) -> None:
    broken = tmp_path / "dkim.pem"
    broken.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    env = cli_env(
        app.state.settings,
        ALERT_EMAILS="redaction@dzaleu.test",
        DKIM_DOMAIN="dzaleu.test",
        DKIM_SELECTOR="nl",
        DKIM_PRIVATE_KEY_PATH=str(broken),
    )
    for _ in range(2):  # an orchestrator restarting it: one incident
        result = await run_cli(["worker"], env)
        assert result.exit_code == 2, result.output
        assert "\nerror: DKIM_PRIVATE_KEY_PATH" in "\n" + result.stderr
    session.expire_all()
    incident = (await session.exec(select(AlertIncident))).one()
    assert (incident.key, incident.kind, incident.times_opened) == ("setup:dkim", "setup_broken", 1)
    rows = (await session.exec(select(Delivery).where(Delivery.kind == DeliveryKind.alert))).all()
    assert [(r.to_address, r.alert_id) for r in rows] == [("redaction@dzaleu.test", incident.id)]
