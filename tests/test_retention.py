"""Retention (DELIVERY_RETENTION_DAYS): old delivery rows and soft-bounce history go in small
batches; a digest keeps its figures; subscribers, their consent, their status history and
bounce events stay."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import httpx
import sqlalchemy as sa
from fastapi import FastAPI
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.bounces.service import apply_bounce
from app.config import Settings
from app.models import (
    BounceEvent,
    BounceType,
    Delivery,
    Digest,
    Subscriber,
    SubscriberEvent,
    SubscriberEventType,
    utcnow,
)
from app.retention import run_retention
from tests.digests.test_digest_control import read, sending_digest
from tests.factories import cli_env, drain_outbox, queue_confirmations, run_cli

FIGURES = ("queued", "sending", "sent", "failed", "skipped", "progress", "recipients")


async def _age(session: AsyncSession, days: int) -> None:
    """Everything in the database happened `days` ago."""
    then = utcnow() - timedelta(days=days)
    await session.execute(
        sa.update(Digest).where(col(Digest.sent_at).is_not(None)).values(sent_at=then)
    )
    for model in (Delivery, SubscriberEvent, BounceEvent):
        await session.execute(sa.update(model).values(created_at=then))
    await session.commit()


async def _history(session: AsyncSession) -> Counter[str]:
    session.expire_all()
    return Counter((await session.exec(select(SubscriberEvent.event))).all())


async def _count(session: AsyncSession, model: type[object]) -> int:
    return (await session.exec(select(sa.func.count()).select_from(model))).one()


async def test_retention_run_deletes_old_rows_and_keeps_figures_consent_and_bounces(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    settings: Settings,
    editor_headers: dict[str, str],
) -> None:
    digest_id = await sending_digest(client, session, app, editor_headers, readers=3)
    await queue_confirmations(session, app.state.tokens, 1, prefix="pending")
    await drain_outbox(app)
    reader = (
        await session.exec(select(Subscriber).where(Subscriber.email == "reader0@example.org"))
    ).one()
    await apply_bounce(
        session, subscriber=reader, type=BounceType.soft, reason="452 full", source="api"
    )
    await apply_bounce(
        session, subscriber=reader, type=BounceType.hard, reason="550 gone", source="api"
    )
    await session.commit()
    await session.refresh(reader)
    consent = (reader.id, reader.confirmed_at, reader.consent_at)
    figures = await read(client, digest_id, editor_headers)
    assert figures["status"] == "sent"
    assert figures["sent"] == 3
    await _age(session, days=100)
    recent = await queue_confirmations(session, app.state.tokens, 1, prefix="recent")
    history = await _history(session)
    assert history[SubscriberEventType.soft_bounce] == 1
    bounces = await _count(session, BounceEvent)
    env = cli_env(settings)

    # Not old enough for --older-than 200: nothing goes.
    kept = await run_cli(["retention", "run", "--older-than", "200"], env)
    assert kept.exit_code == 0, kept.output
    assert "done: 0 delivery rows" in kept.output
    assert await _count(session, Delivery) == 3 + 1 + 1

    done = await run_cli(["retention", "run"], env)  # DELIVERY_RETENTION_DAYS: 90
    assert done.exit_code == 0, done.output
    assert "older than 90 days" in done.output
    assert "done: 4 delivery rows (1 digests and confirmations), 1 history entries" in done.output
    session.expire_all()
    left = (await session.exec(select(Delivery))).all()
    assert [d.subscriber_id for d in left] == recent  # the recent confirmation only

    after = await read(client, digest_id, editor_headers)
    assert {k: after[k] for k in FIGURES} == {k: figures[k] for k in FIGURES}
    assert await _count(session, BounceEvent) == bounces
    expected = history.copy()
    del expected[SubscriberEventType.soft_bounce]
    assert await _history(session) == expected  # every status change stays
    assert await _count(session, Subscriber) == 3 + 1 + 1
    session.expire_all()
    again_reader = await session.get(Subscriber, consent[0])
    assert again_reader is not None
    assert (again_reader.id, again_reader.confirmed_at, again_reader.consent_at) == consent

    again = await run_cli(["retention", "run"], env)
    assert "done: 0 delivery rows (0 digests" in again.output


async def test_retention_goes_in_batches_of_its_own_transactions(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    editor_headers: dict[str, str],
) -> None:
    digest_id = await sending_digest(client, session, app, editor_headers, readers=5)
    await drain_outbox(app)
    await _age(session, days=91)
    batches: list[tuple[str, int]] = []
    result = await run_retention(
        app.state.sessionmaker, days=90, limit=2, progress=lambda what, n: batches.append((what, n))
    )
    assert batches == [
        (f"digest {digest_id}", 2),
        (f"digest {digest_id}", 2),
        (f"digest {digest_id}", 1),
    ]
    assert (result.deliveries, result.digests) == (5, 1)
    assert (await read(client, digest_id, editor_headers))["sent"] == 5
