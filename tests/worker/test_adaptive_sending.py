"""A sender that adapts to the relay, and breakers that protect the sender's reputation.

Each test runs the real sender against a real SMTP server (tests/smtp_server.py) that misbehaves
like a relay does: throttling above a rate, refusing a share of recipients; on SQLite and on
PostgreSQL.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx
import sqlalchemy as sa
from fastapi import FastAPI
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.models import DeliveryStatus, Subscriber, SubscriberStatus
from app.security import Tokens
from tests.factories import digest_deliveries, drain_outbox, make_sender
from tests.smtp_server import SmtpServer
from tests.worker.test_send_promises import snapshot, start_digest, truth

DOMAINS = ("gmail.com", "orange.fr", "yahoo.fr", "example.org")


async def add_readers(session: AsyncSession, tokens: Tokens, count: int) -> list[str]:
    """`count` confirmed readers spread over DOMAINS (readerN@...); their addresses."""
    now = sa.func.now() if session.get_bind().dialect.name == "postgresql" else sa.func.datetime()
    addresses = [f"reader{i}@{DOMAINS[i % len(DOMAINS)]}" for i in range(count)]
    rows = [
        {
            "email": address,
            "email_hash": tokens.email_hash(address),
            "name": f"Lecteur {i}",
            "language": "fr",
            "status": "confirmed",
        }
        for i, address in enumerate(addresses)
    ]
    table = Subscriber.__table__  # type: ignore[attr-defined]
    await session.execute(sa.insert(table).values(created_at=now, updated_at=now), rows)
    await session.commit()
    return addresses


def settings_for(app: FastAPI, **values: object) -> None:
    settings = app.state.settings
    settings.send_concurrency = 4
    settings.send_batch_size = 200
    settings.send_rate_per_second = 0
    for name, value in values.items():
        setattr(settings, name, value)


async def test_a_throttling_relay_slows_the_worker_and_loses_nothing(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    smtp_server: SmtpServer,
    editor_headers: dict[str, str],
) -> None:
    settings_for(app)
    total = 3000
    await add_readers(session, app.state.tokens, total)
    smtp_server.faults.rate_limit = 200.0
    smtp_server.faults.rate_burst = 10.0
    digest_id = await start_digest(client, session, editor_headers)
    stop = asyncio.Event()
    sender = make_sender(app)
    worker = asyncio.create_task(sender.run(stop))
    seen_throttled: list[dict[str, object]] = []
    try:
        deadline = time.monotonic() + 120
        while len(snapshot(smtp_server)) < total:
            assert time.monotonic() < deadline, "timed out"
            state = (
                await client.get(f"/api/v1/digests/{digest_id}", headers=editor_headers)
            ).json()
            if state["throttled_by_relay"]:
                seen_throttled.append(state)
            await asyncio.sleep(0.25)
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        await worker
    await truth(session, smtp_server, digest_id)
    statuses = Counter(d.status for d in await digest_deliveries(session, digest_id))
    assert statuses == {DeliveryStatus.sent: total}, statuses  # none failed, none lost
    assert len({r.rcpt_tos[0] for r in snapshot(smtp_server)}) == total

    # Once settled (after the first 5 seconds), fewer than 5% of attempts are throttled.
    attempts = list(smtp_server.attempts)
    start = attempts[0][0]
    early = [a for a in attempts if a[0] < start + 5]
    settled = [a for a in attempts if a[0] >= start + 5]
    share = sum(t for _, t in settled) / max(1, len(settled))
    duration = attempts[-1][0] - start
    print(
        f"throttling relay (200/s): {len(attempts)} attempts in {duration:.1f}s, "
        f"{sum(t for _, t in early)} of {len(early)} throttled in the first 5s, "
        f"{sum(t for _, t in settled)} of {len(settled)} ({share:.1%}) after; "
        f"final pace {sender.pace.rate}"
    )
    assert settled, "the send ended within 5 seconds: the relay never held it back"
    assert share < 0.05
    # The progress showed the pace and the throttling while it happened.
    assert seen_throttled, "the progress never said the relay throttled"
    assert any(s["pace_per_second"] for s in seen_throttled)
    figures = (
        await client.get(f"/api/v1/digests/{digest_id}/deliverability", headers=editor_headers)
    ).json()
    assert figures["delivered"] == total
    assert figures["deferred"] == sum(t for _, t in attempts)
    assert figures["bounced"] == 0


async def test_a_relay_with_ten_percent_hard_bounces_trips_the_bounce_breaker(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    smtp_server: SmtpServer,
    editor_headers: dict[str, str],
) -> None:
    settings_for(app)
    total = 900
    addresses = await add_readers(session, app.state.tokens, total)
    dead = {a for a in addresses if SmtpServer.index_of(a) % 10 == 0}
    smtp_server.faults.refuse_every = 10
    digest_id = await start_digest(client, session, editor_headers)
    await drain_outbox(app, max_batches=50)
    state = (await client.get(f"/api/v1/digests/{digest_id}", headers=editor_headers)).json()
    assert state["status"] == "paused", state
    assert state["paused_reason"].startswith("bounce breaker:"), state["paused_reason"]
    assert "SEND_PAUSE_BOUNCE_RATE" in state["paused_reason"]
    assert 0.05 < state["bounce_rate"] <= 0.15
    assert state["queued"] > 0  # paused before the end
    await truth(session, smtp_server, digest_id)

    resumed = await client.post(f"/api/v1/digests/{digest_id}/resume", headers=editor_headers)
    assert resumed.status_code == 200, resumed.text
    await drain_outbox(app, max_batches=50)
    final = (await client.get(f"/api/v1/digests/{digest_id}", headers=editor_headers)).json()
    # Fewer than SEND_BREAKER_MIN_ATTEMPTS after the resume: the breaker let it finish.
    assert (final["status"], final["sent"], final["failed"]) == (
        "sent",
        total - len(dead),
        len(dead),
    ), final
    await truth(session, smtp_server, digest_id)  # nothing sent twice
    received = {r.rcpt_tos[0] for r in snapshot(smtp_server)}
    assert received == set(addresses) - dead  # nothing lost
    session.expire_all()
    bounced = set(
        (await session.exec(select(Subscriber.email).where(Subscriber.status == "bounced"))).all()
    )
    assert bounced == dead

    figures = (
        await client.get(
            f"/api/v1/digests/{digest_id}/deliverability",
            params={"domains": 2},
            headers=editor_headers,
        )
    ).json()
    assert (figures["delivered"], figures["bounced"]) == (total - len(dead), len(dead))
    assert figures["domain_count"] == len(DOMAINS)
    assert len(figures["domains"]) == 2
    by_domain = {d["domain"]: d for d in figures["domains"]}
    for domain, row in by_domain.items():
        mine = [a for a in addresses if a.endswith("@" + domain)]
        assert row["delivered"] + row["bounced"] == len(mine)
        assert row["bounced"] == len([a for a in mine if a in dead])


async def test_held_bounces_of_a_send_paused_meanwhile_are_given_back(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    smtp_server: SmtpServer,
    editor_headers: dict[str, str],
) -> None:
    # The guard holds refusals until a send's first SEND_REFUSAL_SAMPLE attempts are seen.
    settings_for(app, send_refusal_sample=1000, send_pause_after_permanent_errors=1000)
    addresses = await add_readers(session, app.state.tokens, 100)
    refused = {a for a in addresses if SmtpServer.index_of(a) % 5 == 0}
    smtp_server.faults.refuse_every = 5
    digest_id = await start_digest(client, session, editor_headers)
    sender = make_sender(app)
    report = await sender.run_batch()
    assert report.held == len(refused)
    # Meanwhile an editor (or another worker's breaker) pauses the send.
    paused = await client.post(f"/api/v1/digests/{digest_id}/pause", headers=editor_headers)
    assert paused.status_code == 200, paused.text
    # Nothing left to claim: the worker decides on what it holds. The send is paused: given back.
    idle = await sender.run_batch()
    assert (idle.failed, idle.released) == (0, len(refused))
    session.expire_all()
    statuses = Counter((await session.exec(select(Subscriber.status))).all())
    assert statuses == {SubscriberStatus.confirmed: 100}, statuses
    rows = {d.status for d in await digest_deliveries(session, digest_id)}
    assert rows == {DeliveryStatus.sent, DeliveryStatus.queued}


async def test_held_bounces_of_a_send_cancelled_meanwhile_are_skipped(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    smtp_server: SmtpServer,
    editor_headers: dict[str, str],
) -> None:
    settings_for(app, send_refusal_sample=1000, send_pause_after_permanent_errors=1000)
    addresses = await add_readers(session, app.state.tokens, 100)
    refused = {a for a in addresses if SmtpServer.index_of(a) % 5 == 0}
    smtp_server.faults.refuse_every = 5
    digest_id = await start_digest(client, session, editor_headers)
    sender = make_sender(app)
    assert (await sender.run_batch()).held == len(refused)
    cancelled = await client.post(f"/api/v1/digests/{digest_id}/cancel", headers=editor_headers)
    assert cancelled.status_code == 200, cancelled.text
    await sender.run_batch()
    session.expire_all()
    assert set((await session.exec(select(Subscriber.status))).all()) == {"confirmed"}
    statuses = Counter(d.status for d in await digest_deliveries(session, digest_id))
    assert statuses == {DeliveryStatus.sent: 80, DeliveryStatus.skipped: 20}, statuses


async def test_digest_status_cli_shows_pace_and_rates(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    smtp_server: SmtpServer,
    editor_headers: dict[str, str],
) -> None:
    from tests.factories import cli_env, run_cli

    settings_for(app, send_rate_per_second=500)
    await add_readers(session, app.state.tokens, 40)
    smtp_server.faults.refuse_every = 20
    digest_id = await start_digest(client, session, editor_headers)
    await drain_outbox(app)
    env = cli_env(app.state.settings)
    status = await run_cli(["digests", "status", str(digest_id)], env)
    assert status.exit_code == 0, status.output
    assert "bounce rate 5.00%, complaint rate 0.00%" in status.output
    domains = await run_cli(["digests", "domains", str(digest_id)], env)
    assert domains.exit_code == 0, domains.output
    assert "delivered 38, deferred 0, bounced 2, complaints 0" in domains.output
    for domain in DOMAINS:
        assert domain in domains.output
    missing = await run_cli(["digests", "domains", "999999"], env)
    assert missing.exit_code != 0
    assert "no digest 999999" in missing.output
