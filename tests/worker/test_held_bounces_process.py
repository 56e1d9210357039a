"""Two real `newsletter worker` processes against a relay that refuses a share of recipients,
while an editor pauses or cancels the send: the bounces they hold are given back, never applied."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.models import DeliveryStatus, Subscriber, SubscriberStatus
from tests.factories import digest_deliveries
from tests.smtp_server import SmtpServer
from tests.worker.test_adaptive_sending import add_readers
from tests.worker.test_send_promises import start_digest
from tests.worker.test_worker_process import start_worker, worker_env

pytestmark = pytest.mark.slow


async def _settled(
    session: AsyncSession, digest_id: int, within: float
) -> list[tuple[int | None, str]]:
    """(subscriber id, status) of the digest's copies once no worker holds any (the bounces
    they held given back)."""
    deadline = time.monotonic() + within
    while True:
        rows = [(d.subscriber_id, d.status) for d in await digest_deliveries(session, digest_id)]
        await session.rollback()  # the next look sees what the workers committed since
        if all(s != DeliveryStatus.sending for _, s in rows) or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("action", ["pause", "cancel"])
async def test_two_workers_give_back_the_bounces_they_hold_when_the_send_halts(
    action: str,
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    smtp_server: SmtpServer,
    database_url: str,
    tmp_path: Path,
    editor_headers: dict[str, str],
    backend: str,
) -> None:
    if backend != "postgresql":
        pytest.skip("several workers need PostgreSQL (SKIP LOCKED); SQLite runs one worker")
    total = 400
    addresses = await add_readers(session, app.state.tokens, total)
    refused = {a for a in addresses if SmtpServer.index_of(a) % 5 == 0}
    smtp_server.faults.refuse_every = 5
    smtp_server.faults.delay_seconds = 0.01  # slow enough to halt mid-send
    digest_id = await start_digest(client, session, editor_headers)
    env = worker_env(database_url, smtp_server, tmp_path)
    # Every refusal is held: the sample (the send's first attempts) is never complete.
    env.update(SEND_REFUSAL_SAMPLE="100000", SEND_PAUSE_AFTER_PERMANENT_ERRORS="100000")
    workers = [start_worker(env, tmp_path, f"w{i}") for i in range(2)]
    try:
        deadline = time.monotonic() + 60
        while len(smtp_server.received) < total // 4:
            assert time.monotonic() < deadline, (tmp_path / "w0.log").read_text()
            await asyncio.sleep(0.05)
        answer = await client.post(f"/api/v1/digests/{digest_id}/{action}", headers=editor_headers)
        assert answer.status_code == 200, answer.text
        rows = await _settled(session, digest_id, within=20)
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(timeout=30)
    statuses = Counter(s for _, s in rows)
    assert DeliveryStatus.sending not in statuses, statuses
    assert DeliveryStatus.failed not in statuses, statuses  # no bounce applied
    session.expire_all()
    readers = Counter((await session.exec(select(Subscriber.status))).all())
    assert readers == {SubscriberStatus.confirmed: total}, readers
    refused_ids = set(
        (
            await session.exec(
                select(Subscriber.id).where(col(Subscriber.email).in_(sorted(refused)))
            )
        ).all()
    )
    waiting = DeliveryStatus.queued if action == "pause" else DeliveryStatus.skipped
    refused_rows = [s for subscriber_id, s in rows if subscriber_id in refused_ids]
    assert refused_rows
    assert set(refused_rows) == {waiting}
