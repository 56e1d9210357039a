"""Schedules: a recurrence (cron in a time zone) that composes and sends a digest for one cadence
when there is news, and the runs of its slots, each exactly once.

Exactly once: a slot's run is a row with a unique (schedule_id, slot_at). A worker that finds a
slot due inserts the run (INSERT ... ON CONFLICT DO NOTHING) and commits at once; of any number
of workers, one inserts, the others insert nothing. The run is claimed under a lease, like an
outbox row: its digest and deliveries are written in ONE transaction with the run's outcome, and
that transaction commits only if the worker still holds the lease. A worker that dies mid-run
leaves the lease to run out; another takes the slot over (within SCHEDULE_CATCH_UP_HOURS).

Catch-up: only the latest slot at or before now is ever due, and only within
SCHEDULE_CATCH_UP_HOURS of its time: after downtime, one late send at most, never one per missed
slot.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import SQLModel, col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app import metrics
from app.alerts import service as alerts
from app.digests import service as digests
from app.models import (
    Article,
    Cadence,
    Digest,
    DigestArticle,
    Schedule,
    ScheduleRun,
    ScheduleRunOutcome,
    as_utc,
    utcnow,
)
from app.schedules.recurrence import (
    InvalidCron,
    InvalidTimezone,
    check_cron,
    next_slot,
    parse_zone,
    previous_slot,
)
from app.topics import canonical_topics, in_topics, topic_keys

log = logging.getLogger("app.schedules")

RUNS_SHOWN = 10
MAX_ARTICLES = digests.MAX_ARTICLES
# A slot found this soon after its time is on time, not a catch-up (workers look every 20 s):
# SCHEDULE_CATCH_UP_HOURS=0 turns catch-ups off, not the schedules.
ON_TIME = timedelta(minutes=5)
# Articles looked at per run before the categories filter (newest first).
CANDIDATES = 1000
FIELDS = (
    "name",
    "cron",
    "timezone",
    "cadence",
    "min_articles",
    "max_articles",
    "categories",
    "subject",
    "intro",
    "enabled",
)


class ScheduleNotFound(LookupError):
    pass


class InvalidSchedule(ValueError):
    """A field that a schema cannot check (a cron expression, a zone, min above max)."""

    def __init__(self, field: str, message: str, value: object) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.value = value


class LeaseLost(RuntimeError):
    """Another worker took the run over (this one was too slow): this one's work is dropped."""


@dataclass(frozen=True, slots=True)
class ClaimedRun:
    id: int
    schedule_id: int
    slot_at: datetime
    started_at: datetime


# --- Editing -----------------------------------------------------------------------------------


def _checked(values: Mapping[str, Any]) -> dict[str, Any]:
    """The values, cron normalised; InvalidSchedule naming the first bad field."""
    out = dict(values)
    if "cron" in out:
        try:
            out["cron"] = check_cron(out["cron"])
        except InvalidCron as exc:
            raise InvalidSchedule("cron", str(exc), values["cron"]) from exc
    if "timezone" in out:
        try:
            parse_zone(out["timezone"])
        except InvalidTimezone as exc:
            raise InvalidSchedule("timezone", str(exc), values["timezone"]) from exc
    if "cadence" in out:
        out["cadence"] = Cadence(out["cadence"]).value
    if "categories" in out:
        out["categories"] = canonical_topics(out["categories"] or [], [])
    return out


def _check_bounds(schedule: Schedule) -> None:
    if schedule.min_articles > schedule.max_articles:
        raise InvalidSchedule(
            "min_articles",
            f"min_articles ({schedule.min_articles}) is above max_articles "
            f"({schedule.max_articles})",
            schedule.min_articles,
        )


async def create_schedule(
    session: AsyncSession, *, values: Mapping[str, Any], now: datetime | None = None
) -> Schedule:
    now = now or utcnow()
    unknown = set(values) - set(FIELDS)
    assert not unknown, unknown
    schedule = Schedule(**_checked(values), active_since=now, created_at=now, updated_at=now)
    _check_bounds(schedule)
    session.add(schedule)
    await session.flush()
    return schedule


async def get_schedule(session: AsyncSession, *, schedule_id: int) -> Schedule:
    schedule = await session.get(Schedule, schedule_id, populate_existing=True)
    if schedule is None:
        raise ScheduleNotFound(f"no schedule {schedule_id}")
    return schedule


async def list_schedules(session: AsyncSession) -> list[Schedule]:
    return list((await session.exec(select(Schedule).order_by(col(Schedule.id)))).all())


async def update_schedule(
    session: AsyncSession,
    *,
    schedule_id: int,
    changes: Mapping[str, Any],
    now: datetime | None = None,
) -> Schedule:
    """Any field. A schedule re-enabled, or given a new cron or zone, starts from now: a slot
    that passed before the change is not sent late."""
    now = now or utcnow()
    schedule = await get_schedule(session, schedule_id=schedule_id)
    checked = _checked(changes)
    restart = (checked.get("enabled") is True and not schedule.enabled) or any(
        field in checked and checked[field] != getattr(schedule, field)
        for field in ("cron", "timezone")
    )
    for field, value in checked.items():
        setattr(schedule, field, value)
    _check_bounds(schedule)
    if restart:
        schedule.active_since = now
    schedule.updated_at = now
    session.add(schedule)
    await session.flush()
    return schedule


async def delete_schedule(session: AsyncSession, *, schedule_id: int) -> None:
    """Its runs go with it; its digests stay (their schedule_id becomes NULL)."""
    schedule = await get_schedule(session, schedule_id=schedule_id)
    await session.execute(
        sa.update(Digest)
        .where(col(Digest.schedule_id) == schedule_id)
        .values(schedule_id=None)
        .execution_options(synchronize_session=False)
    )
    await session.execute(sa.delete(ScheduleRun).where(col(ScheduleRun.schedule_id) == schedule_id))
    await session.delete(schedule)
    await session.flush()


async def recent_runs(
    session: AsyncSession, *, schedule_ids: Sequence[int], limit: int = RUNS_SHOWN
) -> dict[int, list[ScheduleRun]]:
    """The last `limit` runs of each schedule, newest first, in one query."""
    found: dict[int, list[ScheduleRun]] = {i: [] for i in schedule_ids}
    if not schedule_ids:
        return found
    rank = (
        func.row_number()
        .over(
            partition_by=col(ScheduleRun.schedule_id),
            order_by=(col(ScheduleRun.slot_at).desc(), col(ScheduleRun.id).desc()),
        )
        .label("rank")
    )
    ranked = (
        select(col(ScheduleRun.id), rank)
        .where(col(ScheduleRun.schedule_id).in_(list(schedule_ids)))
        .subquery()
    )
    rows = await session.exec(
        select(ScheduleRun)
        .join(ranked, ranked.c.id == col(ScheduleRun.id))
        .where(ranked.c.rank <= limit)
        .order_by(col(ScheduleRun.schedule_id), col(ScheduleRun.slot_at).desc())
        .execution_options(populate_existing=True)
    )
    for run in rows.all():
        found[run.schedule_id].append(run)
    return found


def next_run_at(schedule: Schedule, *, now: datetime | None = None) -> datetime | None:
    """The next slot, in the schedule's zone (its UTC offset shows); None when disabled."""
    if not schedule.enabled:
        return None
    now = now or utcnow()
    zone = parse_zone(schedule.timezone)
    start = max(now, as_utc(schedule.active_since) - timedelta(microseconds=1))
    return next_slot(schedule.cron, zone, start).astimezone(zone)


# --- Due slots ---------------------------------------------------------------------------------


def due_slot(schedule: Schedule, *, now: datetime, catch_up: timedelta) -> datetime | None:
    """The slot of this schedule to run now, if any: the latest one at or before `now`, not
    before the schedule was (re-)enabled, and no older than `catch_up`."""
    if not schedule.enabled:
        return None
    slot = previous_slot(schedule.cron, parse_zone(schedule.timezone), now)
    if slot < as_utc(schedule.active_since) or now - slot > max(catch_up, ON_TIME):
        return None
    return slot


def _insert_run(session: AsyncSession) -> Any:
    table = SQLModel.metadata.tables["schedule_run"]
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(
            index_elements=["schedule_id", "slot_at"]
        )
    return sqlite.insert(table).on_conflict_do_nothing(index_elements=["schedule_id", "slot_at"])


async def claim_slot(
    session: AsyncSession,
    *,
    schedule_id: int,
    slot_at: datetime,
    worker_id: str,
    lease_seconds: int,
    now: datetime,
) -> ClaimedRun | None:
    """The run of this slot, if this worker is the one that inserted it; None if it exists."""
    table = SQLModel.metadata.tables["schedule_run"]
    inserted = await session.execute(
        _insert_run(session)
        .values(
            schedule_id=schedule_id,
            slot_at=slot_at,
            outcome=ScheduleRunOutcome.running.value,
            started_at=now,
            lease_until=now + timedelta(seconds=lease_seconds),
            leased_by=worker_id,
            article_count=0,
        )
        .returning(table.c.id)
    )
    run_id = inserted.scalar_one_or_none()
    if run_id is None:
        return None
    return ClaimedRun(id=run_id, schedule_id=schedule_id, slot_at=slot_at, started_at=now)


async def claim_due_runs(
    session: AsyncSession,
    *,
    worker_id: str,
    lease_seconds: int,
    catch_up: timedelta,
    now: datetime | None = None,
) -> list[ClaimedRun]:
    """The runs this worker is to do now: due slots nobody has taken, and runs whose worker died
    (lease run out) while their slot is still within `catch_up`. The caller commits at once."""
    now = now or utcnow()
    claimed: list[ClaimedRun] = []
    enabled = await session.exec(select(Schedule).where(col(Schedule.enabled).is_(True)))
    for schedule in enabled.all():
        assert schedule.id is not None
        try:
            slot = due_slot(schedule, now=now, catch_up=catch_up)
        except (InvalidCron, InvalidTimezone):  # a zone removed from the tz database since
            log.exception("schedule %s cannot be computed", schedule.id)
            continue
        if slot is None:
            continue
        run = await claim_slot(
            session,
            schedule_id=schedule.id,
            slot_at=slot,
            worker_id=worker_id,
            lease_seconds=lease_seconds,
            now=now,
        )
        if run is not None:
            claimed.append(run)
    claimed += await _take_over_abandoned(
        session, worker_id=worker_id, lease_seconds=lease_seconds, catch_up=catch_up, now=now
    )
    return claimed


async def _take_over_abandoned(
    session: AsyncSession,
    *,
    worker_id: str,
    lease_seconds: int,
    catch_up: timedelta,
    now: datetime,
) -> list[ClaimedRun]:
    abandoned = await session.exec(
        select(ScheduleRun).where(
            col(ScheduleRun.outcome) == ScheduleRunOutcome.running,
            col(ScheduleRun.lease_until) < now,
        )
    )
    taken: list[ClaimedRun] = []
    for run in abandoned.all():
        assert run.id is not None
        if now - as_utc(run.slot_at) > catch_up:
            await report_failed_run(
                session,
                run_id=run.id,
                worker_id=None,
                error="the worker running it stopped, and the slot is now older than "
                "SCHEDULE_CATCH_UP_HOURS",
                now=now,
            )
            continue
        # Conditional: of two workers taking over the same run, one updates it.
        result = await session.execute(
            sa.update(ScheduleRun)
            .where(
                col(ScheduleRun.id) == run.id,
                col(ScheduleRun.outcome) == ScheduleRunOutcome.running,
                col(ScheduleRun.lease_until) < now,
            )
            .values(
                leased_by=worker_id,
                lease_until=now + timedelta(seconds=lease_seconds),
                started_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        if getattr(result, "rowcount", 0) == 1:
            log.warning("schedule %s: taking over the run of %s", run.schedule_id, run.slot_at)
            taken.append(
                ClaimedRun(
                    id=run.id,
                    schedule_id=run.schedule_id,
                    slot_at=as_utc(run.slot_at),
                    started_at=now,
                )
            )
    return taken


# --- Running a slot ----------------------------------------------------------------------------


async def _since(session: AsyncSession, schedule: Schedule, run: ClaimedRun) -> datetime:
    """Articles newer than this: when the schedule's last sent digest was composed, or, before
    its first, the slot before the schedule was created (skipped slots let articles add up)."""
    last = (
        await session.exec(
            select(func.max(col(ScheduleRun.started_at))).where(
                col(ScheduleRun.schedule_id) == schedule.id,
                col(ScheduleRun.outcome) == ScheduleRunOutcome.sent,
                col(ScheduleRun.id) != run.id,
            )
        )
    ).one()
    if last is not None:
        return as_utc(last)
    zone = parse_zone(schedule.timezone)
    return previous_slot(schedule.cron, zone, as_utc(schedule.active_since))


async def articles_for_run(
    session: AsyncSession, *, schedule: Schedule, run: ClaimedRun
) -> list[Article]:
    """Newest first, at most `max_articles`: articles newer than the schedule's last sent
    digest and not newer than the run, in its categories (when it has some), and in none of its digests already sent."""
    since = await _since(session, schedule, run)
    sent_by_schedule = (
        select(DigestArticle.article_id)
        .join(Digest, col(Digest.id) == col(DigestArticle.digest_id))
        .where(
            col(Digest.schedule_id) == schedule.id,
            col(Digest.status).in_(digests.STARTED_STATUSES),
            col(DigestArticle.article_id).is_not(None),
        )
    )
    newest = func.coalesce(col(Article.published_at), col(Article.created_at))
    rows = await session.exec(
        select(Article)
        # Up to the run's start: an article dated later (a post scheduled ahead) waits its turn.
        .where(
            newest >= since,
            newest <= run.started_at,
            col(Article.id).not_in(sent_by_schedule),
        )
        .order_by(newest.desc(), col(Article.id).desc())
        .limit(CANDIDATES)
    )
    wanted = topic_keys(schedule.categories or [])
    chosen = [a for a in rows.all() if in_topics(a.categories or [], wanted)]
    return chosen[: schedule.max_articles]


async def execute_run(
    session: AsyncSession, *, run: ClaimedRun, worker_id: str, now: datetime | None = None
) -> ScheduleRun:
    """Compose and queue the slot's digest, or record the skip, with the run's outcome, in the
    caller's transaction. LeaseLost when another worker holds the run now: roll back."""
    now = now or utcnow()
    schedule = await get_schedule(session, schedule_id=run.schedule_id)
    articles = await articles_for_run(session, schedule=schedule, run=run)
    values: dict[str, Any] = {"article_count": len(articles), "finished_at": now}
    if len(articles) < max(schedule.min_articles, 1):
        values.update(
            outcome=ScheduleRunOutcome.skipped_not_enough_articles,
            detail=f"{len(articles)} new article(s), {schedule.min_articles} needed",
        )
    else:
        digest = await digests.create_digest(
            session,
            subject=schedule.subject,
            intro=schedule.intro,
            article_ids=[a.id for a in articles if a.id is not None],
            cadence=schedule.cadence,
            schedule_id=schedule.id,
        )
        assert digest.id is not None
        digest = await digests.send_digest(session, digest_id=digest.id)
        values.update(outcome=ScheduleRunOutcome.sent, digest_id=digest.id)
    finished = await session.execute(
        sa.update(ScheduleRun)
        .where(
            col(ScheduleRun.id) == run.id,
            col(ScheduleRun.outcome) == ScheduleRunOutcome.running,
            col(ScheduleRun.leased_by) == worker_id,
        )
        .values(lease_until=None, **values)
        .execution_options(synchronize_session=False)
    )
    if getattr(finished, "rowcount", 0) != 1:
        raise LeaseLost(f"run {run.id} is no longer this worker's")
    await alerts.schedule_run_succeeded(session, schedule_id=run.schedule_id)
    outcome = values["outcome"]
    metrics.count_schedule_run(outcome)
    log.info(
        "schedule %s, slot %s: %s (%s articles)",
        schedule.id,
        run.slot_at.isoformat(),
        outcome,
        len(articles),
        extra={"schedule": schedule.id, "digest": values.get("digest_id")},
    )
    result = await session.get(ScheduleRun, run.id, populate_existing=True)
    assert result is not None
    return result


async def report_failed_run(
    session: AsyncSession,
    *,
    run_id: int,
    worker_id: str | None,
    error: str,
    now: datetime | None = None,
) -> bool:
    """The one place a run fails (an error while composing, a worker that died too long ago):
    recorded on the run, logged as an error, counted, and told to the editors (app.alerts) once until a run succeeds. False when
    the run is not this worker's any more (`worker_id` None: whoever held it)."""
    now = now or utcnow()
    where = [col(ScheduleRun.id) == run_id, col(ScheduleRun.outcome) == ScheduleRunOutcome.running]
    if worker_id is not None:
        where.append(col(ScheduleRun.leased_by) == worker_id)
    result = await session.execute(
        sa.update(ScheduleRun)
        .where(*where)
        .values(
            outcome=ScheduleRunOutcome.failed,
            finished_at=now,
            lease_until=None,
            detail=error[:2000],
        )
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0) != 1:
        return False
    metrics.count_schedule_run(ScheduleRunOutcome.failed)
    log.error("schedule run %s failed: %s", run_id, error, extra={"schedule_run": run_id})
    failed = await session.get(ScheduleRun, run_id)
    schedule = await session.get(Schedule, failed.schedule_id) if failed else None
    if failed is not None and schedule is not None and schedule.id is not None:
        await alerts.schedule_run_failed(
            session,
            schedule_id=schedule.id,
            name=schedule.name,
            slot=as_utc(failed.slot_at),
            error=error,
        )
    return True
