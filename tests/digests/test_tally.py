"""A digest's figures come from its tally (kept by triggers as deliveries change), match the
deliveries at every step, survive folding, and outlive the delivery rows."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

import httpx
import sqlalchemy as sa
from fastapi import FastAPI
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.background import housekeep_forever
from app.digests.tally import fold_tallies, read_tallies
from app.models import Delivery, DeliveryKind, DigestTally, utcnow
from tests.digests.test_digest_control import control, read, sending_digest
from tests.factories import send_one_batch

STATUSES = ("queued", "sending", "sent", "failed", "skipped")


async def truth(session: AsyncSession, digest_id: int) -> dict[str, int]:
    """The counts a GROUP BY over the deliveries gives (what progress read before tallies)."""
    rows = await session.exec(
        select(Delivery.status).where(
            Delivery.digest_id == digest_id, Delivery.kind == DeliveryKind.digest
        )
    )
    counted = Counter(rows.all())
    return {status: counted.get(status, 0) for status in STATUSES}


def shown(body: dict[str, int]) -> dict[str, int]:
    return {status: body[status] for status in STATUSES}


async def test_figures_follow_each_change_survive_folding_and_outlive_the_rows(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    editor_headers: dict[str, str],
) -> None:
    app.state.settings.send_batch_size = 3
    digest_id = await sending_digest(client, session, app, editor_headers, readers=7)
    test_copy = await client.post(
        f"/api/v1/digests/{digest_id}/test",
        json={"emails": ["editor@example.org"]},
        headers=editor_headers,
    )
    assert test_copy.status_code == 202, test_copy.text
    assert shown(await read(client, digest_id, editor_headers)) == await truth(session, digest_id)

    await send_one_batch(app)
    body = await read(client, digest_id, editor_headers)
    assert shown(body) == await truth(session, digest_id)
    assert body["sent"] >= 2  # the test copy went first or with them; it is not counted

    assert (await control(client, digest_id, "cancel", editor_headers)).status_code == 200
    before = await read(client, digest_id, editor_headers)
    assert shown(before) == await truth(session, digest_id)
    assert before["skipped"] > 0

    rows = (
        select(sa.func.count()).select_from(DigestTally).where(DigestTally.digest_id == digest_id)
    )
    many = (await session.exec(rows)).one()
    assert digest_id in await fold_tallies(session, before=utcnow() + timedelta(seconds=1))
    await session.commit()
    assert (await session.exec(rows)).one() < many
    assert (await session.exec(rows)).one() <= len(STATUSES)
    assert shown(await read(client, digest_id, editor_headers)) == shown(before)

    # Deleting the rows (retention) leaves the figures as they were.
    await session.execute(sa.delete(Delivery).where(col(Delivery.digest_id) == digest_id))
    await session.commit()
    after = await read(client, digest_id, editor_headers)
    assert shown(after) == shown(before)
    assert after["progress"] == before["progress"]


async def test_the_worker_folds_tallies_older_than_the_rate_window(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    editor_headers: dict[str, str],
) -> None:
    app.state.settings.send_batch_size = 2
    digest_id = await sending_digest(client, session, app, editor_headers, readers=5)
    for _ in range(3):
        await send_one_batch(app)
    before = shown(await read(client, digest_id, editor_headers))
    rows = (
        select(sa.func.count()).select_from(DigestTally).where(DigestTally.digest_id == digest_id)
    )
    many = (await session.exec(rows)).one()
    assert many > len(STATUSES)
    # As if those changes were two minutes old: past the rate window, so the worker folds them.
    await session.execute(sa.update(DigestTally).values(created_at=utcnow() - timedelta(minutes=2)))
    await session.commit()

    stop = asyncio.Event()
    housekeeping = asyncio.create_task(
        housekeep_forever(app.state.settings, app.state.sessionmaker, stop)
    )
    for _ in range(100):
        await asyncio.sleep(0.05)
        if (await session.exec(rows)).one() < many:
            break
    stop.set()
    await asyncio.wait_for(housekeeping, timeout=5)
    assert (await session.exec(rows)).one() <= len(STATUSES)
    assert shown(await read(client, digest_id, editor_headers)) == before


async def test_rows_of_the_rate_window_fold_to_one_per_second_and_keep_the_rate(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    editor_headers: dict[str, str],
) -> None:
    """A long send's tally rows of the last minute fold to one per second and sign: the
    counts do not change, nor the copies sent since any whole second."""
    digest_id = await sending_digest(client, session, app, editor_headers, readers=3)
    base = utcnow().replace(microsecond=0) - timedelta(seconds=1)
    rows = []
    for t in range(30):  # three recorded groups a second, for 30 seconds
        for k in range(3):
            at = base - timedelta(seconds=t) + timedelta(milliseconds=100 * (k + 1))
            rows += [
                {"digest_id": digest_id, "status": "sent", "n": 2, "created_at": at},
                {"digest_id": digest_id, "status": "sending", "n": -2, "created_at": at},
            ]
    await session.execute(sa.insert(DigestTally), rows)
    await session.commit()
    since = base - timedelta(seconds=19)
    before = (await read_tallies(session, digest_ids=[digest_id], since=since))[digest_id]
    assert before.sent_since == 20 * 3 * 2

    count = select(sa.func.count()).select_from(DigestTally)
    many = (await session.exec(count.where(DigestTally.digest_id == digest_id))).one()
    folded = await fold_tallies(
        session, before=base + timedelta(seconds=1), seconds_from=base - timedelta(seconds=60)
    )
    await session.commit()
    assert folded == [digest_id]
    after = (await read_tallies(session, digest_ids=[digest_id], since=since))[digest_id]
    assert after.counts == before.counts
    assert after.sent_since == before.sent_since
    left = (await session.exec(count.where(DigestTally.digest_id == digest_id))).one()
    assert left <= 30 * 2 + 2 < many  # a row per second and sign (and the queueing's own)
    # Nothing left to fold: the next fold reads and changes nothing.
    assert (
        await fold_tallies(
            session, before=base + timedelta(seconds=1), seconds_from=base - timedelta(seconds=60)
        )
        == []
    )
