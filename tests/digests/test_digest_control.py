"""Pause, resume and cancel a digest's send; its progress (counts, rate, ETA) in the API and the
`newsletter digests` command; a broken sending setup pauses the digest, resume finishes it."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.articles import service as articles
from app.config import Settings
from app.digests import service as digests
from app.models import Delivery, DeliveryStatus, as_utc
from tests.factories import (
    cli_env,
    digest_deliveries,
    drain_outbox,
    make_sender,
    make_subscriber,
    run_cli,
    send_one_batch,
)
from tests.smtp_server import SmtpServer

SAMPLE = Path(__file__).parents[1] / "data" / "wordpress-feed-fr.xml"


async def sending_digest(
    client: httpx.AsyncClient,
    session: AsyncSession,
    app: FastAPI,
    headers: dict[str, str],
    *,
    readers: int,
) -> int:
    """A digest of the sample feed queued to `readers` confirmed subscribers; its id."""
    await articles.import_feed_document(session, data=SAMPLE.read_bytes())
    await session.commit()
    for i in range(readers):
        await make_subscriber(session, app.state.tokens, email=f"reader{i}@example.org")
    created = await client.post("/api/v1/digests", json={"subject": "Semaine"}, headers=headers)
    assert created.status_code == 201, created.text
    digest_id = int(created.json()["id"])
    sent = await client.post(f"/api/v1/digests/{digest_id}/send", headers=headers)
    assert sent.status_code == 202, sent.text
    assert sent.json()["queued"] == readers
    return digest_id


async def read(client: httpx.AsyncClient, digest_id: int, headers: dict[str, str]) -> Any:
    response = await client.get(f"/api/v1/digests/{digest_id}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def control(
    client: httpx.AsyncClient, digest_id: int, action: str, headers: dict[str, str]
) -> httpx.Response:
    return await client.post(f"/api/v1/digests/{digest_id}/{action}", headers=headers)


def copies(smtp_server: SmtpServer) -> Counter[str]:
    """Digest copies received per recipient (confirmation emails are not queued here)."""
    return Counter(r.rcpt_tos[0] for r in smtp_server.received)


# --- Pause, resume, cancel ---------------------------------------------------------------------


async def test_pause_stops_claiming_and_resume_sends_each_once(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    smtp_server: SmtpServer,
    editor_headers: dict[str, str],
) -> None:
    digest_id = await sending_digest(client, session, app, editor_headers, readers=5)

    paused = await control(client, digest_id, "pause", editor_headers)
    assert paused.status_code == 200, paused.text
    assert paused.json()["status"] == "paused"
    assert paused.json()["paused_reason"] == "paused by an editor"
    assert paused.json()["queued"] == 5

    report = await send_one_batch(app)
    assert report.claimed == 0
    assert copies(smtp_server).total() == 0
    assert {d.status for d in await digest_deliveries(session, digest_id)} == {"queued"}

    again = await control(client, digest_id, "pause", editor_headers)
    assert again.status_code == 409
    assert again.json()["status"] == "paused"
    assert "cannot pause" in again.json()["detail"]

    resumed = await control(client, digest_id, "resume", editor_headers)
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["status"] == "sending"
    assert resumed.json()["paused_reason"] is None

    report = await drain_outbox(app)
    assert report.sent == 5
    assert set(copies(smtp_server).values()) == {1}
    assert len(copies(smtp_server)) == 5
    final = await read(client, digest_id, editor_headers)
    assert (final["status"], final["sent"], final["queued"], final["progress"]) == (
        "sent",
        5,
        0,
        1.0,
    )

    # Nothing to resume or pause once sent, nor to cancel.
    for action in ("pause", "resume", "cancel"):
        response = await control(client, digest_id, action, editor_headers)
        assert response.status_code == 409, action
        assert response.json()["status"] == "sent"


async def test_cancel_skips_the_rest_and_sends_nothing_more(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    smtp_server: SmtpServer,
    editor_headers: dict[str, str],
) -> None:
    app.state.settings.send_batch_size = 2
    digest_id = await sending_digest(client, session, app, editor_headers, readers=5)
    assert (await send_one_batch(app)).sent == 2

    cancelled = await control(client, digest_id, "cancel", editor_headers)
    assert cancelled.status_code == 200, cancelled.text
    body = cancelled.json()
    assert body["status"] == "cancelled"
    assert body["cancelled_at"] is not None
    assert (body["sent"], body["skipped"], body["queued"], body["sending"]) == (2, 3, 0, 0)
    assert body["eta_seconds"] is None
    assert body["progress"] == 1.0

    assert (await drain_outbox(app)).claimed == 0
    assert copies(smtp_server).total() == 2
    skipped = [
        d for d in await digest_deliveries(session, digest_id) if d.status == DeliveryStatus.skipped
    ]
    assert len(skipped) == 3
    assert {d.last_error for d in skipped} == {"digest cancelled"}

    for action in ("pause", "resume", "cancel"):
        response = await control(client, digest_id, action, editor_headers)
        assert response.status_code == 409, action
        assert response.json()["status"] == "cancelled"


async def test_cancel_a_paused_send_and_a_draft(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    editor_headers: dict[str, str],
) -> None:
    digest_id = await sending_digest(client, session, app, editor_headers, readers=3)
    assert (await control(client, digest_id, "resume", editor_headers)).status_code == 409
    assert (await control(client, digest_id, "pause", editor_headers)).status_code == 200
    cancelled = await control(client, digest_id, "cancel", editor_headers)
    assert cancelled.status_code == 200
    assert (cancelled.json()["status"], cancelled.json()["skipped"]) == ("cancelled", 3)
    assert cancelled.json()["paused_reason"] is None

    draft = await client.post("/api/v1/digests", json={"article_ids": [1]}, headers=editor_headers)
    draft_id = draft.json()["id"]
    for action in ("pause", "resume"):
        response = await control(client, draft_id, action, editor_headers)
        assert response.status_code == 409
        assert response.json()["status"] == "draft"
    dropped = await control(client, draft_id, "cancel", editor_headers)
    assert dropped.json()["status"] == "cancelled"
    # A cancelled draft cannot be sent any more.
    assert (
        await client.post(f"/api/v1/digests/{draft_id}/send", headers=editor_headers)
    ).status_code == 409


@pytest.mark.parametrize("action", ["pause", "resume", "cancel"])
async def test_control_needs_a_key_and_a_digest(
    client: httpx.AsyncClient, editor_headers: dict[str, str], action: str
) -> None:
    assert (await control(client, 1, action, {})).status_code == 401
    missing = await control(client, 999, action, editor_headers)
    assert missing.status_code == 404
    assert missing.json()["detail"] == "no digest 999"
    bad = await control(client, 0, action, editor_headers)
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["path", "digest_id"]


# --- Progress ----------------------------------------------------------------------------------


async def test_counts_rate_eta_and_progress_after_a_partial_send(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    editor_headers: dict[str, str],
) -> None:
    app.state.settings.send_batch_size = 3
    digest_id = await sending_digest(client, session, app, editor_headers, readers=6)
    before = await read(client, digest_id, editor_headers)
    assert (before["queued"], before["sent"], before["recipients"]) == (6, 0, 6)
    assert before["rate_per_second"] is None
    assert before["eta_seconds"] is None
    assert before["progress"] == 0.0

    assert (await send_one_batch(app)).sent == 3
    during = await read(client, digest_id, editor_headers)
    assert during["status"] == "sending"
    assert {k: during[k] for k in ("queued", "sending", "sent", "failed", "skipped")} == {
        "queued": 3,
        "sending": 0,
        "sent": 3,
        "failed": 0,
        "skipped": 0,
    }
    # 3 sent within the first second(s) of the send: the window is the time since it started.
    rate = during["rate_per_second"]
    assert 3 / 60 <= rate <= 3.0
    assert during["eta_seconds"] == pytest.approx(3 / rate)  # 3 left at that rate
    assert during["progress"] == pytest.approx(0.5)

    listed = await client.get("/api/v1/digests", headers=editor_headers)
    item = listed.json()["items"][0]
    assert item["id"] == digest_id
    assert (item["sent"], item["queued"], item["progress"]) == (3, 3, pytest.approx(0.5))
    assert 3 / 60 <= item["rate_per_second"] <= 3.0

    # Paused: still the rate of the last minute, but no ETA (nothing is moving).
    await control(client, digest_id, "pause", editor_headers)
    paused = await read(client, digest_id, editor_headers)
    assert paused["rate_per_second"] is not None
    assert paused["eta_seconds"] is None
    await control(client, digest_id, "resume", editor_headers)

    await drain_outbox(app)
    done = await read(client, digest_id, editor_headers)
    assert done["status"] == "sent"
    assert 6 / 60 <= done["rate_per_second"] <= 6.0
    assert done["eta_seconds"] is None  # nothing left
    assert done["progress"] == 1.0


async def test_rate_window_is_the_last_minute_or_since_the_start(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    editor_headers: dict[str, str],
) -> None:
    app.state.settings.send_batch_size = 3
    digest_id = await sending_digest(client, session, app, editor_headers, readers=6)
    await send_one_batch(app)
    digest = await digests.get_digest(session, digest_id=digest_id)
    await session.refresh(digest)
    assert digest.send_started_at is not None
    started = as_utc(digest.send_started_at)

    async def at(seconds: float) -> digests.DigestProgress:
        now = started + timedelta(seconds=seconds)
        return (await digests.digest_progress(session, digests=[digest], now=now))[digest_id]

    half_minute = await at(30)  # 3 sent in the 30 s since the start
    assert half_minute.rate_per_second == pytest.approx(3 / 30, rel=0.05)
    assert half_minute.eta_seconds == pytest.approx(30, rel=0.05)
    later = await at(60)  # a full minute's window, the sends still in it
    assert later.rate_per_second == pytest.approx(3 / 60)
    assert later.eta_seconds == pytest.approx(60)
    idle = await at(120)  # nothing sent in the last minute: no rate, no ETA
    assert (idle.rate_per_second, idle.eta_seconds) == (None, None)
    assert idle.counts == digests.DigestCounts(queued=3, sent=3)
    assert idle.progress == pytest.approx(0.5)


# --- The command -------------------------------------------------------------------------------


async def test_cli_status_and_list(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    settings: Settings,
    editor_headers: dict[str, str],
) -> None:
    app.state.settings.send_batch_size = 2
    digest_id = await sending_digest(client, session, app, editor_headers, readers=4)
    await send_one_batch(app)

    result = await run_cli(["digests", "status", str(digest_id)], cli_env(settings))
    assert result.exit_code == 0, result.output
    assert f"digest {digest_id} 'Semaine': sending" in result.stdout
    assert "recipients 4: queued 2, sending 0, sent 2, failed 0, skipped 0" in result.stdout
    assert re.search(r"progress 50\.0%, rate \d+\.\d\d/s, ETA \d+:\d\d", result.stdout)

    listed = await run_cli(["digests", "list"], cli_env(settings))
    assert listed.exit_code == 0, listed.output
    assert "sending" in listed.stdout
    assert "50%" in listed.stdout

    missing = await run_cli(["digests", "status", "999"], cli_env(settings))
    assert missing.exit_code == 1
    assert missing.stderr.strip() == "error: no digest 999"
    missing = await run_cli(["digests", "status", "999", "--follow"], cli_env(settings))
    assert missing.exit_code == 1
    assert missing.stderr.strip() == "error: no digest 999"


async def test_cli_shows_a_subject_given_per_language(
    client: httpx.AsyncClient, settings: Settings, editor_headers: dict[str, str]
) -> None:
    """`{"fr": ..., "en": ...}` subjects were listed as "(default)" and left out of `status`."""
    created = await client.post(
        "/api/v1/articles",
        json={"title": "Article", "url": "https://www.dzaleu.com/a/"},
        headers=editor_headers,
    )
    assert created.status_code == 201, created.text
    digest = await client.post(
        "/api/v1/digests",
        json={
            "article_ids": [created.json()["id"]],
            "subject": {"fr": "Édition spéciale", "en": "Special"},
        },
        headers=editor_headers,
    )
    assert digest.status_code == 201, digest.text
    digest_id = digest.json()["id"]

    listed = await run_cli(["digests", "list"], cli_env(settings, COLUMNS="200"))
    assert listed.exit_code == 0, listed.output
    assert "Édition spéciale" in listed.stdout
    assert "(default)" not in listed.stdout
    status = await run_cli(["digests", "status", str(digest_id)], cli_env(settings))
    assert status.exit_code == 0, status.output
    assert f"digest {digest_id} 'Édition spéciale': draft" in status.stdout


async def test_cli_follow_stops_when_sent_or_paused(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    settings: Settings,
    editor_headers: dict[str, str],
) -> None:
    digest_id = await sending_digest(client, session, app, editor_headers, readers=3)
    await drain_outbox(app)
    args = ["digests", "status", str(digest_id), "--follow", "--interval", "0.05"]
    result = await run_cli(args, cli_env(settings))
    assert result.exit_code == 0, result.output
    assert f"digest {digest_id} 'Semaine': sent" in result.stdout
    assert "sent 3, failed 0, skipped 0" in result.stdout
    assert "progress 100.0%" in result.stdout

    draft = await client.post("/api/v1/digests", json={"article_ids": [1]}, headers=editor_headers)
    other = draft.json()["id"]
    assert (await client.post(f"/api/v1/digests/{other}/send", headers=editor_headers)).is_success
    await control(client, other, "pause", editor_headers)
    args = ["digests", "status", str(other), "--follow", "--interval", "0.05"]
    result = await run_cli(args, cli_env(settings))
    assert result.exit_code == 0, result.output
    assert f"digest {other}: paused" in result.stdout
    assert "paused: paused by an editor" in result.stdout


# --- A broken sending setup --------------------------------------------------------------------


async def test_broken_setup_pauses_the_digest_then_resume_sends_each_once(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    smtp_server: SmtpServer,
    editor_headers: dict[str, str],
) -> None:
    app.state.settings.send_pause_after_permanent_errors = 3
    digest_id = await sending_digest(client, session, app, editor_headers, readers=6)
    smtp_server.faults.mail_from = "553 5.7.1 Sender address rejected"

    report = await drain_outbox(app)
    assert report.sent == 0
    assert report.failed == 0
    paused = await read(client, digest_id, editor_headers)
    assert paused["status"] == "paused"
    assert "553 5.7.1 Sender address rejected" in paused["paused_reason"]
    assert re.search(r"after \d+ consecutive permanent SMTP errors", paused["paused_reason"])
    assert (paused["failed"], paused["queued"], paused["sent"]) == (0, 6, 0)
    rows = await digest_deliveries(session, digest_id)
    assert all(d.attempts == 0 for d in rows)

    smtp_server.faults.mail_from = None
    resumed = await control(client, digest_id, "resume", editor_headers)
    assert resumed.status_code == 200, resumed.text
    report = await drain_outbox(app)
    assert report.sent == 6
    received = copies(smtp_server)
    assert sorted(received) == sorted(f"reader{i}@example.org" for i in range(6))
    assert set(received.values()) == {1}
    done = await read(client, digest_id, editor_headers)
    assert (done["status"], done["sent"], done["failed"]) == ("sent", 6, 0)


async def test_the_worker_that_paused_a_digest_sends_it_after_resume(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    smtp_server: SmtpServer,
    editor_headers: dict[str, str],
) -> None:
    app.state.settings.send_pause_after_permanent_errors = 3
    digest_id = await sending_digest(client, session, app, editor_headers, readers=4)
    smtp_server.faults.mail_from = "553 5.7.1 Sender address rejected"
    worker = make_sender(app)  # one long-lived worker, as `newsletter worker` runs
    await worker.run_batch()
    assert (await read(client, digest_id, editor_headers))["status"] == "paused"

    smtp_server.faults.mail_from = None
    await control(client, digest_id, "resume", editor_headers)
    for _ in range(3):
        await worker.run_batch()
    assert (await read(client, digest_id, editor_headers))["sent"] == 4


async def _run_until(predicate: Any, seconds: float) -> bool:
    for _ in range(int(seconds / 0.05)):
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return bool(predicate())


@pytest.mark.parametrize("action", ["pause", "cancel"])
async def test_pause_or_cancel_stops_the_messages_a_worker_already_holds(
    action: str,
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    smtp_server: SmtpServer,
    editor_headers: dict[str, str],
) -> None:
    app.state.settings.send_batch_size = 200  # the whole send is in the worker's hands at once
    app.state.settings.send_concurrency = 2
    digest_id = await sending_digest(client, session, app, editor_headers, readers=60)
    smtp_server.faults.delay_seconds = 0.05  # ~40 messages/s: slow enough to stop half-way
    stop = asyncio.Event()
    task = asyncio.create_task(make_sender(app).run(stop))
    try:
        assert await _run_until(lambda: copies(smtp_server).total() >= 5, 10)
        assert (await control(client, digest_id, action, editor_headers)).status_code == 200
        at_stop = copies(smtp_server).total()
        await asyncio.sleep(1.5)
        # At most the messages on the wire and half a second's worth got out after the click.
        assert copies(smtp_server).total() <= at_stop + 2 + 25
        assert copies(smtp_server).total() < 60
        if action == "pause":
            assert (await control(client, digest_id, "resume", editor_headers)).status_code == 200
            assert await _run_until(lambda: len(copies(smtp_server)) == 60, 20)
    finally:
        stop.set()
        await task
    received = copies(smtp_server)
    assert set(received.values()) == {1}
    rows = await digest_deliveries(session, digest_id)
    if action == "cancel":
        assert {d.status for d in rows} <= {DeliveryStatus.sent, DeliveryStatus.skipped}
        assert sum(d.status == DeliveryStatus.sent for d in rows) == received.total()
    else:
        assert {d.status for d in rows} == {DeliveryStatus.sent}


async def test_a_copy_refused_for_now_after_its_send_was_cancelled_is_skipped(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    smtp_server: SmtpServer,
    editor_headers: dict[str, str],
) -> None:
    """Copies on the wire when the editor cancels, which the relay then refuses with a 4xx:
    skipped, not back in the queue for good (nobody claims a cancelled send's rows)."""
    app.state.settings.send_concurrency = 3
    digest_id = await sending_digest(client, session, app, editor_headers, readers=3)
    smtp_server.faults.delay_seconds = 0.5  # all three wait for the relay's verdict
    smtp_server.faults.data = "451 4.3.0 Try again later"
    batch = asyncio.create_task(send_one_batch(app))
    await asyncio.sleep(0.25)
    assert (await control(client, digest_id, "cancel", editor_headers)).status_code == 200
    await batch
    statuses = (
        await session.exec(select(Delivery.status).where(col(Delivery.digest_id) == digest_id))
    ).all()
    assert statuses == [DeliveryStatus.skipped] * 3
    state = (await client.get(f"/api/v1/digests/{digest_id}", headers=editor_headers)).json()
    assert (state["status"], state["queued"], state["skipped"]) == ("cancelled", 0, 3)


async def test_a_pause_gives_back_a_paced_batch_at_once(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    smtp_server: SmtpServer,
    editor_headers: dict[str, str],
) -> None:
    """With SEND_RATE_PER_SECOND, the copies of a paused send do not wait their turn to be
    given back (30 copies at 2 a second held the rows `sending` for 15 s)."""
    app.state.settings.send_rate_per_second = 2.0
    app.state.settings.send_batch_size = 30
    digest_id = await sending_digest(client, session, app, editor_headers, readers=30)
    stop = asyncio.Event()
    task = asyncio.create_task(make_sender(app).run(stop))
    try:
        assert await _run_until(lambda: copies(smtp_server).total() >= 1, 10)
        assert (await control(client, digest_id, "pause", editor_headers)).status_code == 200
        await asyncio.sleep(2.0)
        statuses = Counter(
            (
                await session.exec(
                    select(Delivery.status).where(col(Delivery.digest_id) == digest_id)
                )
            ).all()
        )
        assert statuses[DeliveryStatus.sending] == 0, statuses
        assert statuses[DeliveryStatus.queued] >= 20, statuses
    finally:
        stop.set()
        await task
