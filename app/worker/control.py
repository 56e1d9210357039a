"""What a worker knows of the sends and readers it must stop for, checked before each message.

`Control` is written by two tasks and read by the lanes:
- the listener (`app.outbox.signals.listen`): a pause, cancel or unsubscribe, milliseconds after
  its commit;
- the watcher: every half second, the rows in hand are checked in the database (the safety net
  when a signal was missed: another process on SQLite, a reconnecting LISTEN), and leases are
  renewed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from enum import Enum

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from app.outbox import queue as outbox
from app.outbox.kinds import Kinds
from app.outbox.queue import Claimed
from app.outbox.signals import parse_signal

log = logging.getLogger("app.worker")

WATCH_SECONDS = 0.5  # the periodic check of the rows in hand


class Stop(Enum):
    halted = "halted"  # its send is paused or cancelled: give the row back
    left = "left"  # its reader left the list: record it skipped
    lost = "lost"  # not ours any more (lease taken over): neither send nor record


class Control:
    """Halted sends and revoked readers and rows, with when they were learnt."""

    def __init__(self, *, halting_kinds: Iterable[str], forget_after: float) -> None:
        # Kinds whose rows stop with their send (digest copies; not test copies of a draft).
        self.halting_kinds = frozenset(halting_kinds)
        self.forget_after = forget_after
        self._halted: dict[int, float] = {}
        self._left_readers: dict[int, float] = {}
        self._left_rows: set[int] = set()
        self._lost_rows: set[int] = set()
        self._news = asyncio.Event()

    # --- Written by the listener and the watcher --------------------------------------------

    def on_signal(self, message: str) -> None:
        parsed = parse_signal(message)
        if parsed is None:
            return
        action, value = parsed
        if action == "halt":
            self.halt(value)
        elif action == "resume":
            self._halted.pop(value, None)
        elif action == "revoke":
            self._left_readers[value] = time.monotonic()
            self._tell()

    def halt(self, send_id: int) -> None:
        self._halted.setdefault(send_id, time.monotonic())
        self._tell()

    @property
    def news(self) -> asyncio.Event:
        """Set once a send halts or a reader leaves: a lane waiting for its turn looks again."""
        return self._news

    def _tell(self) -> None:
        self._news.set()
        self._news = asyncio.Event()

    def halted_since(self, send_id: int) -> float | None:
        return self._halted.get(send_id)

    def resumed(self, send_ids: Iterable[int], *, claimed_at: float) -> None:
        """A claim that started after a halt still returned rows of the send: it is running
        again (the claim takes only rows of sends that may go out)."""
        for send_id in send_ids:
            halted_at = self._halted.get(send_id)
            if halted_at is not None and halted_at < claimed_at:
                del self._halted[send_id]

    def held_rows_checked(self, *, lost: set[int], left: set[int]) -> None:
        self._lost_rows |= lost
        self._left_rows |= left

    def done_with(self, ids: Iterable[int]) -> None:
        """The rows of a finished batch: forget what was noted about them."""
        done = set(ids)
        self._lost_rows -= done
        self._left_rows -= done
        horizon = time.monotonic() - self.forget_after
        self._left_readers = {k: t for k, t in self._left_readers.items() if t >= horizon}

    # --- Read by the lanes, before each message ---------------------------------------------

    def stop_for(self, delivery: Claimed) -> Stop | None:
        if delivery.id in self._lost_rows:
            return Stop.lost
        if (
            delivery.digest_id is not None
            and delivery.digest_id in self._halted
            and delivery.kind in self.halting_kinds
        ):
            return Stop.halted
        if delivery.id in self._left_rows or (
            delivery.subscriber_id is not None and delivery.subscriber_id in self._left_readers
        ):
            return Stop.left
        return None


class Watcher:
    """The periodic check of the rows in hand, and lease renewal, while a batch is out."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        kinds: Kinds,
        control: Control,
        *,
        worker_id: str,
        lease_seconds: int,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.kinds = kinds
        self.control = control
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self._renewed = time.monotonic()

    async def run(self, held: Callable[[], list[Claimed]], done: asyncio.Event) -> None:
        """Until `done`: every WATCH_SECONDS check the rows `held()` returns; every third of a
        lease renew every lease this worker holds (the prefetched batch's too)."""
        renew_every = max(WATCH_SECONDS, self.lease_seconds / 3)
        while not done.is_set():
            try:
                await asyncio.wait_for(done.wait(), timeout=WATCH_SECONDS)
                return
            except TimeoutError:
                pass
            try:
                await self.check(held(), renew=time.monotonic() - self._renewed >= renew_every)
            except Exception:  # a database blip: the next look covers it
                log.warning("could not check the rows in hand", exc_info=True)

    async def check(self, rows: list[Claimed], *, renew: bool = False) -> None:
        send_ids: dict[str, set[int]] = {}
        for row in rows:
            if row.digest_id is not None:
                send_ids.setdefault(row.kind, set()).add(row.digest_id)
        async with self.sessionmaker() as session:
            for kind_name, ids in send_ids.items():
                kind = self.kinds.get(kind_name)
                if kind is not None:
                    for send_id in await kind.halted_sends(session, send_ids=ids):
                        self.control.halt(send_id)
            lost, left = await outbox.check_held(
                session, worker_id=self.worker_id, ids=[r.id for r in rows]
            )
            self.control.held_rows_checked(lost=lost, left=left)
            if renew:
                await outbox.renew_leases(
                    session, worker_id=self.worker_id, lease_seconds=self.lease_seconds
                )
                await session.commit()
                self._renewed = time.monotonic()
