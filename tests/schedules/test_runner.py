"""Due slots run by the worker's scheduler, with a clock the tests move: at the right local time
across DST, skipped without enough articles, once with racing workers, once after a crash, one
catch-up after downtime."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fastapi import FastAPI
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.db import make_engine, make_sessionmaker
from app.keys import load_hashing_key
from app.main import create_app
from app.models import Digest, DigestArticle, Schedule, ScheduleRun, utcnow
from app.schedules import service
from app.schedules.runner import Scheduler
from app.security import Tokens
from tests.conftest import make_settings
from tests.factories import Clock, drain_outbox, make_article, make_subscriber, text_part
from tests.smtp_server import SmtpServer

PARIS = ZoneInfo("Europe/Paris")


async def new_schedule(session: AsyncSession, *, now: datetime, **values: Any) -> Schedule:
    fields: dict[str, Any] = {
        "name": "Weekly",
        "cron": "0 8 * * 5",
        "timezone": "Europe/Paris",
        "cadence": "weekly",
        "min_articles": 1,
        "max_articles": 15,
        "categories": [],
        "subject": None,
        "intro": None,
        "enabled": True,
    }
    fields.update(values)
    schedule = await service.create_schedule(session, values=fields, now=now)
    await session.commit()
    return schedule


def scheduler(app: FastAPI, clock: Clock, worker_id: str = "w1") -> Scheduler:
    return Scheduler(app.state.settings, app.state.sessionmaker, clock=clock, worker_id=worker_id)


async def runs_of(session: AsyncSession, schedule_id: int | None) -> list[ScheduleRun]:
    rows = await session.exec(
        select(ScheduleRun)
        .where(ScheduleRun.schedule_id == schedule_id)
        .order_by(col(ScheduleRun.slot_at))
        .execution_options(populate_existing=True)
    )
    return list(rows.all())


async def digest_count(session: AsyncSession) -> int:
    return int((await session.exec(select(func.count()).select_from(Digest))).one())


@pytest.mark.parametrize(
    "start",
    [datetime(2026, 3, 2, tzinfo=UTC), datetime(2026, 10, 5, tzinfo=UTC)],
    ids=["march", "october"],
)
async def test_weekly_schedule_over_eight_weeks_sends_eight_times_at_eight_local(
    app: FastAPI, session: AsyncSession, smtp_server: SmtpServer, start: datetime
) -> None:
    tokens = app.state.tokens
    await make_subscriber(session, tokens, email="weekly@example.org", cadence="weekly")
    await make_subscriber(session, tokens, email="daily@example.org", cadence="daily")
    clock = Clock(start)
    schedule = await new_schedule(session, now=clock.now)
    worker = scheduler(app, clock)
    sent_at: list[datetime] = []
    while clock.now < start + timedelta(weeks=8):
        local = clock.now.astimezone(PARIS)
        if (local.weekday(), local.hour, local.minute) == (2, 12, 0):  # Wednesdays at noon
            await make_article(session, title=f"Week {local:%V}", published_at=clock.now)
        for run in await worker.run_due():
            sent_at.append(clock.now)
            assert run.outcome == "sent"
        clock.advance(timedelta(minutes=30))

    runs = await runs_of(session, schedule.id)
    assert len(runs) == 8
    assert len(sent_at) == 8
    for run, at in zip(runs, sent_at, strict=True):
        local = run.slot_at.replace(tzinfo=UTC).astimezone(PARIS)
        assert (local.weekday(), local.hour, local.minute) == (4, 8, 0)
        assert at == run.slot_at.replace(tzinfo=UTC)  # sent at the slot's tick, not later
    # Both sides of the change: 07:00 UTC in winter, 06:00 UTC in summer.
    assert {r.slot_at.hour for r in runs} == {6, 7}
    # Each digest has that week's article only; only the weekly reader gets them.
    await drain_outbox(app)
    assert len(smtp_server.messages_to("weekly@example.org")) == 8
    assert smtp_server.messages_to("daily@example.org") == []
    articles = await session.exec(select(func.count()).select_from(DigestArticle))
    assert articles.one() == 8


async def test_a_slot_with_too_few_articles_is_skipped_then_articles_add_up(
    app: FastAPI, session: AsyncSession
) -> None:
    clock = Clock(datetime(2026, 11, 23, 12, tzinfo=UTC))  # a Monday
    schedule = await new_schedule(session, now=clock.now, min_articles=3)
    worker = scheduler(app, clock)
    for day in (1, 2):
        await make_article(session, title=f"A{day}", published_at=clock.now + timedelta(days=day))
    clock.now = datetime(2026, 11, 27, 7, 0, 30, tzinfo=UTC)  # Friday 08:00:30 Paris
    [run] = await worker.run_due()
    assert run.outcome == "skipped_not_enough_articles"
    assert run.article_count == 2
    assert run.digest_id is None
    assert await digest_count(session) == 0
    assert await worker.run_due() == []  # the slot is done

    await make_article(session, title="A3", published_at=clock.now + timedelta(days=2))
    clock.now = datetime(2026, 12, 4, 7, 1, tzinfo=UTC)
    [run] = await worker.run_due()
    assert run.outcome == "sent"
    assert run.article_count == 3
    assert [r.outcome for r in await runs_of(session, schedule.id)] == [
        "skipped_not_enough_articles",
        "sent",
    ]


async def test_categories_and_max_articles(app: FastAPI, session: AsyncSession) -> None:
    clock = Clock(datetime(2026, 11, 23, 12, tzinfo=UTC))
    await new_schedule(session, now=clock.now, categories=["economie", "CULTURE"], max_articles=2)
    for hours, categories in enumerate(
        [["Économie"], ["Sport"], ["Culture", "Europe"], ["Économie"], []], start=1
    ):
        await make_article(
            session,
            title=f"Article {hours}",
            published_at=clock.now + timedelta(hours=hours),
            categories=categories,
        )
    clock.now = datetime(2026, 11, 27, 7, 0, tzinfo=UTC)
    [run] = await scheduler(app, clock).run_due()
    assert run.outcome == "sent"
    assert run.article_count == 2
    titles = (
        await session.exec(
            select(DigestArticle.title)
            .where(DigestArticle.digest_id == run.digest_id)
            .order_by(col(DigestArticle.position))
        )
    ).all()
    assert titles == ["Article 4", "Article 3"]  # the newest two in the categories
    digest = await session.get(Digest, run.digest_id)
    assert digest is not None
    assert digest.cadence == "weekly"


async def test_two_workers_racing_on_a_due_slot_send_one_digest(
    app: FastAPI, session: AsyncSession
) -> None:
    clock = Clock(datetime(2026, 11, 23, 12, tzinfo=UTC))
    schedule = await new_schedule(session, now=clock.now)
    await make_article(session, title="News", published_at=clock.now)
    clock.now = datetime(2026, 11, 27, 7, 0, 5, tzinfo=UTC)
    workers = [scheduler(app, clock, worker_id=f"w{i}") for i in range(4)]
    results = await asyncio.gather(*(w.run_due() for w in workers))
    assert sorted(len(r) for r in results) == [0, 0, 0, 1]
    assert len(await runs_of(session, schedule.id)) == 1
    assert await digest_count(session) == 1


async def test_a_worker_down_for_three_slots_sends_one_catch_up(
    app: FastAPI, session: AsyncSession
) -> None:
    clock = Clock(datetime(2026, 11, 23, 10, 0, tzinfo=UTC))
    schedule = await new_schedule(session, now=clock.now, cron="0 * * * *", timezone="UTC")
    worker = scheduler(app, clock)
    await make_article(session, title="Before", published_at=clock.now)
    clock.now = datetime(2026, 11, 23, 10, 1, tzinfo=UTC)
    assert [r.outcome for r in await worker.run_due()] == ["sent"]  # the 10:00 slot
    for hour in (11, 12, 13):  # down from 10:01 to 13:40: slots of 11:00, 12:00, 13:00 missed
        await make_article(
            session, title=f"At {hour}", published_at=clock.now.replace(hour=hour - 1, minute=30)
        )
    clock.now = datetime(2026, 11, 23, 13, 40, tzinfo=UTC)
    [catch_up] = await worker.run_due()
    assert catch_up.outcome == "sent"
    assert catch_up.article_count == 3
    assert catch_up.slot_at.replace(tzinfo=UTC) == datetime(2026, 11, 23, 13, tzinfo=UTC)
    clock.advance(timedelta(minutes=10))
    assert await worker.run_due() == []
    assert len(await runs_of(session, schedule.id)) == 2


async def test_no_catch_up_past_schedule_catch_up_hours(
    app: FastAPI, session: AsyncSession
) -> None:
    clock = Clock(datetime(2026, 11, 23, 6, 0, tzinfo=UTC))
    schedule = await new_schedule(session, now=clock.now, cron="0 8 * * *", timezone="UTC")
    await make_article(session, title="News", published_at=clock.now)
    clock.now = datetime(2026, 11, 23, 14, 1, tzinfo=UTC)  # 6 h 1 min after the 08:00 slot
    assert await scheduler(app, clock).run_due() == []
    assert await runs_of(session, schedule.id) == []
    clock.now = datetime(2026, 11, 24, 8, 0, 1, tzinfo=UTC)  # the next slot runs as usual
    assert [r.outcome for r in await scheduler(app, clock).run_due()] == ["sent"]


async def test_a_new_schedule_does_not_send_for_a_slot_before_it_existed(
    app: FastAPI, session: AsyncSession
) -> None:
    clock = Clock(datetime(2026, 11, 27, 7, 30, tzinfo=UTC))  # Friday 08:30 Paris
    schedule = await new_schedule(session, now=clock.now)
    await make_article(session, title="News", published_at=clock.now - timedelta(hours=2))
    assert await scheduler(app, clock).run_due() == []
    next_run = service.next_run_at(schedule, now=clock.now)
    assert next_run is not None
    assert next_run.isoformat() == "2026-12-04T08:00:00+01:00"


async def test_a_crashed_run_is_taken_over_once_its_lease_runs_out(
    app: FastAPI, session: AsyncSession
) -> None:
    clock = Clock(datetime(2026, 11, 23, 12, tzinfo=UTC))
    schedule = await new_schedule(session, now=clock.now)
    await make_article(session, title="News", published_at=clock.now)
    clock.now = datetime(2026, 11, 27, 7, 0, 5, tzinfo=UTC)
    # Worker A claims the slot, then dies before composing (its claim was committed).
    async with app.state.sessionmaker() as s:
        [claimed] = await service.claim_due_runs(
            s, worker_id="dead", lease_seconds=300, catch_up=timedelta(hours=6), now=clock.now
        )
        await s.commit()
    survivor = scheduler(app, clock, worker_id="alive")
    assert await survivor.run_due() == []  # the lease still holds
    clock.advance(timedelta(seconds=301))
    [run] = await survivor.run_due()
    assert run.id == claimed.id
    assert run.outcome == "sent"
    # Were the dead worker only slow, its late work is refused and rolled back.
    async with app.state.sessionmaker() as s:
        with pytest.raises(service.LeaseLost):
            await service.execute_run(s, run=claimed, worker_id="dead", now=clock.now)
        await s.rollback()
    assert await digest_count(session) == 1
    assert len(await runs_of(session, schedule.id)) == 1


async def test_a_failed_run_is_recorded_by_report_failed_run(
    app: FastAPI, session: AsyncSession, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    clock = Clock(datetime(2026, 11, 23, 12, tzinfo=UTC))
    schedule = await new_schedule(session, now=clock.now)
    await make_article(session, title="News", published_at=clock.now)
    clock.now = datetime(2026, 11, 27, 7, 0, 5, tzinfo=UTC)

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the template is broken")

    monkeypatch.setattr(service.digests, "send_digest", broken)
    [run] = await scheduler(app, clock).run_due()
    assert run.outcome == "failed"
    assert run.detail == "RuntimeError: the template is broken"
    assert await digest_count(session) == 0  # the digest was rolled back with the run
    assert any("failed" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)
    assert [r.outcome for r in await runs_of(session, schedule.id)] == ["failed"]


async def test_no_catch_up_at_all_still_runs_slots_on_time(
    app: FastAPI, session: AsyncSession
) -> None:
    settings = app.state.settings.model_copy(update={"schedule_catch_up_hours": 0})
    clock = Clock(datetime(2026, 11, 23, 6, 0, tzinfo=UTC))
    await new_schedule(session, now=clock.now, cron="0 8 * * *", timezone="UTC")
    await make_article(session, title="News", published_at=clock.now)
    worker = Scheduler(settings, app.state.sessionmaker, clock=clock, worker_id="w")
    clock.now = datetime(2026, 11, 23, 8, 0, 40, tzinfo=UTC)  # a look 40 s after the slot
    assert [r.outcome for r in await worker.run_due()] == ["sent"]
    await make_article(session, title="More", published_at=clock.now)
    clock.now = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)  # an hour late: no catch-up
    assert await worker.run_due() == []


async def test_serve_runs_the_schedules_inside(
    database_url: str, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    """The embedded default: an app started with its worker (newsletter serve) runs a due slot
    and sends its digest, with the real clock."""
    settings = make_settings(database_url, smtp_server, tmp_path)
    engine = make_engine(database_url)  # the data first: the worker's first look finds it
    try:
        tokens = Tokens.from_settings(settings, hashing_key=await load_hashing_key(engine))
        async with make_sessionmaker(engine)() as session:
            await make_subscriber(session, tokens, email="now@example.org")
            now = utcnow()
            await new_schedule(
                session, now=now - timedelta(minutes=2), cron="* * * * *", timezone="UTC"
            )
            await make_article(session, title="Flash", published_at=now - timedelta(minutes=1))
    finally:
        await engine.dispose()
    app = create_app(settings, run_worker=True)
    async with app.router.lifespan_context(app):
        for _ in range(400):  # up to 20 s
            if smtp_server.messages_to("now@example.org"):
                break
            await asyncio.sleep(0.05)
    [message] = smtp_server.messages_to("now@example.org")[:1]
    assert "Flash" in text_part(message)
