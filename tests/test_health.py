"""/healthz says what is wrong (relay, workers, queue) and /metrics shows queue age and worker
heartbeats; the relay probe is cached, not made per request."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
from fastapi import FastAPI
from sqlmodel.ext.asyncio.session import AsyncSession

from app.health import beat, heartbeat_forever
from app.models import Delivery, DeliveryKind, WorkerHeartbeat, utcnow
from tests.smtp_server import SmtpServer


async def test_a_relay_that_does_not_answer_is_a_503_naming_it(
    app: FastAPI, client: httpx.AsyncClient, smtp_server: SmtpServer
) -> None:
    assert (await client.get("/healthz")).status_code == 200
    smtp_server.stop()
    # The last answer is kept for HEALTH_RELAY_PROBE_SECONDS: no probe per request.
    assert (await client.get("/healthz")).status_code == 200
    app.state.relay_probe.every = 0
    answer = await client.get("/healthz")
    assert answer.status_code == 503
    assert answer.json()["problems"] == ["relay"]
    assert "connect" in answer.json()["checks"]["relay"]


async def test_workers_that_stopped_beating_and_an_old_queue_are_503(
    app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
) -> None:
    settings = app.state.settings
    await beat(session, worker_id="host:1:abc")
    await session.commit()
    ok = (await client.get("/healthz")).json()
    assert ok["checks"]["workers"]["running"] == 1
    assert ok["problems"] == []

    beat_row = await session.get(WorkerHeartbeat, "host:1:abc")
    assert beat_row is not None
    beat_row.seen_at = utcnow() - timedelta(seconds=settings.health_heartbeat_max_age_seconds + 5)
    session.add(beat_row)
    # A confirmation due for longer than HEALTH_QUEUE_MAX_AGE_SECONDS, and nobody sending it.
    waited = timedelta(seconds=settings.health_queue_max_age_seconds + 60)
    session.add(Delivery(kind=DeliveryKind.confirmation, next_attempt_at=utcnow() - waited))
    await session.commit()
    answer = await client.get("/healthz")
    assert answer.status_code == 503
    assert answer.json()["problems"] == ["workers", "queue"]
    assert answer.json()["checks"]["workers"]["running"] == 0

    metrics = (await client.get("/metrics")).text
    assert 'worker_heartbeat_age_seconds{worker="host:1:abc"}' in metrics
    assert "workers_running 0.0" in metrics
    age_line = next(x for x in metrics.splitlines() if x.startswith("queue_oldest_due_seconds "))
    assert float(age_line.split()[1]) >= waited.total_seconds()


async def test_a_worker_beats_while_it_runs_and_leaves_no_row_when_it_stops(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(heartbeat_forever(app.state.sessionmaker, worker_id="w1", stop=stop))
    for _ in range(200):
        if (await client.get("/healthz")).json()["checks"]["workers"]["running"] == 1:
            break
        await asyncio.sleep(0.02)
    assert (await client.get("/healthz")).json()["checks"]["workers"]["running"] == 1
    stop.set()
    await task
    workers = (await client.get("/healthz")).json()["checks"]["workers"]
    assert workers == {"running": 0, "freshest_heartbeat_seconds": None}
