"""The worker's periodic job for this room: run the schedules' due slots, and send the digests
editors scheduled for a time that has come.

Every SCHEDULE_CHECK_SECONDS the scheduler claims the due slots (app.schedules.service: one run
per schedule and slot, whatever the number of workers), polls FEED_URL once when it claimed any,
then composes and queues each digest (or records the skip); then it sends each draft whose
`send_at` has come (claimed by a conditional UPDATE: once, whatever the number of workers). The
sender sends the copies. The clock is injectable: tests move time instead of waiting.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from app.articles.polling import refresh_feed
from app.config import Settings
from app.digests import service as digests
from app.models import ScheduleRun, utcnow
from app.schedules import service
from app.worker.sender import default_worker_id

log = logging.getLogger("app.schedules")

SCHEDULE_CHECK_SECONDS = 20.0


class Scheduler:
    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        clock: Callable[[], datetime] = utcnow,
        worker_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.clock = clock
        self.worker_id = worker_id or default_worker_id()

    @property
    def catch_up(self) -> timedelta:
        return timedelta(hours=self.settings.schedule_catch_up_hours)

    async def run_due(self) -> list[ScheduleRun]:
        """Claim and run the slots due now; the runs this worker finished."""
        async with self.sessionmaker() as session:
            claimed = await service.claim_due_runs(
                session,
                worker_id=self.worker_id,
                lease_seconds=self.settings.send_lease_seconds,
                catch_up=self.catch_up,
                now=self.clock(),
            )
            await session.commit()  # the claim is visible to every other worker at once
        return await self._run(claimed)

    async def run_now(self, schedule_id: int) -> ScheduleRun | None:
        """`newsletter schedules run-now ID`: a slot at this instant, whatever the cron says
        (disabled schedules included). ScheduleNotFound for an unknown id."""
        now = self.clock()
        async with self.sessionmaker() as session:
            schedule = await service.get_schedule(session, schedule_id=schedule_id)
            assert schedule.id is not None
            run = await service.claim_slot(
                session,
                schedule_id=schedule.id,
                slot_at=now,
                worker_id=self.worker_id,
                lease_seconds=self.settings.send_lease_seconds,
                now=now,
            )
            await session.commit()
        if run is None:
            return None
        done = await self._run([run])
        return done[0] if done else await self._reload(run.id)

    async def send_due_digests(self) -> list[int]:
        """Send the drafts editors scheduled whose time has come; the ids this worker sent.
        Each in its own transaction, claimed by a conditional UPDATE (app.digests.service
        .send_if_due): with any number of workers, each digest is sent once."""
        now = self.clock()
        async with self.sessionmaker() as session:
            due = await digests.due_digests(session, now=now)
        sent = []
        for digest_id in due:
            async with self.sessionmaker() as session:
                digest = await digests.send_if_due(session, digest_id=digest_id, now=now)
                await session.commit()
            if digest is not None:
                log.info(
                    "digest %s: scheduled send started (%d readers)", digest_id, digest.recipients
                )
                sent.append(digest_id)
        return sent

    async def _run(self, claimed: list[service.ClaimedRun]) -> list[ScheduleRun]:
        if not claimed:
            return []
        if self.settings.feed_url:  # the feed first, so the digest has the latest articles
            await refresh_feed(self.settings, self.sessionmaker, url=self.settings.feed_url)
        done = []
        for run in claimed:
            result = await self._execute(run)
            if result is not None:
                done.append(result)
        return done

    async def _execute(self, run: service.ClaimedRun) -> ScheduleRun | None:
        try:
            async with self.sessionmaker() as session:
                result = await service.execute_run(
                    session, run=run, worker_id=self.worker_id, now=self.clock()
                )
                await session.commit()
                return result
        except service.LeaseLost:
            log.warning("schedule %s: another worker took the run over", run.schedule_id)
            return None
        except service.ScheduleNotFound:
            return None  # deleted meanwhile: its runs went with it
        except Exception as exc:  # recorded as a failed run; the loop goes on
            log.exception("schedule %s: the run of %s failed", run.schedule_id, run.slot_at)
            async with self.sessionmaker() as session:
                await service.report_failed_run(
                    session,
                    run_id=run.id,
                    worker_id=self.worker_id,
                    error=f"{exc.__class__.__name__}: {exc}",
                    now=self.clock(),
                )
                await session.commit()
            return await self._reload(run.id)

    async def _reload(self, run_id: int) -> ScheduleRun | None:
        async with self.sessionmaker() as session:
            return await session.get(ScheduleRun, run_id)

    async def run(self, stop: asyncio.Event) -> None:
        """Check every SCHEDULE_CHECK_SECONDS (schedules, then digests scheduled by editors)
        until `stop` is set."""
        while not stop.is_set():
            try:
                await self.run_due()
            except Exception:  # a database hiccup must not end the schedules for good
                log.exception("schedule check failed; trying again")
            try:
                await self.send_due_digests()
            except Exception:
                log.exception("scheduled digests check failed; trying again")
            try:
                await asyncio.wait_for(stop.wait(), timeout=SCHEDULE_CHECK_SECONDS)
            except TimeoutError:
                pass
