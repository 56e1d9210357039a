"""Tell every worker, within milliseconds, that a send was halted or a reader left.

A pause, a cancel or an unsubscribe publishes a signal in the transaction that makes the change;
it reaches the workers when (and only if) that transaction commits:

- PostgreSQL: `pg_notify` on one channel; each worker LISTENs on a connection of its own, so
  workers on any host hear it.
- SQLite (one machine): an in-process bus, fed after the commit; it reaches the worker that runs
  inside `newsletter serve`. A `newsletter worker` in another process on SQLite learns of the
  change from its periodic check of the rows it holds instead (half a second).

Workers keep what they heard in memory and check it before each message (app/worker/control.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session
from sqlmodel.ext.asyncio.session import AsyncSession

log = logging.getLogger(__name__)

CHANNEL = "newsletter_outbox"
_PENDING = "outbox_signals"

Listener = Callable[[str], None]


def halt_signal(send_id: int) -> str:
    return f"halt:{send_id}"


def resume_signal(send_id: int) -> str:
    return f"resume:{send_id}"


def revoke_signal(subscriber_id: int) -> str:
    return f"revoke:{subscriber_id}"


def parse_signal(message: str) -> tuple[str, int] | None:
    """("halt" | "resume" | "revoke", id), or None for anything else."""
    action, _, value = message.partition(":")
    if action in ("halt", "resume", "revoke") and value.isdigit():
        return action, int(value)
    return None


async def publish(session: AsyncSession, message: str) -> None:
    """Send `message` to every worker when the session's transaction commits."""
    bind = session.get_bind()
    engine = bind if isinstance(bind, sa.Engine) else bind.engine
    if engine.dialect.name == "postgresql":
        # Delivered at COMMIT, dropped on ROLLBACK: a signal never runs ahead of its change.
        await session.execute(sa.select(sa.func.pg_notify(CHANNEL, message)))
        return
    pending: list[tuple[str, str]] = session.sync_session.info.setdefault(_PENDING, [])
    pending.append((_bus_key(str(engine.url)), message))


# --- The in-process bus (SQLite) ---------------------------------------------------------------


class _Bus:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: dict[str, list[Listener]] = {}

    def subscribe(self, key: str, listener: Listener) -> Callable[[], None]:
        with self._lock:
            self._listeners.setdefault(key, []).append(listener)

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._listeners.get(key, []).remove(listener)

        return unsubscribe

    def deliver(self, key: str, message: str) -> None:
        with self._lock:
            listeners = list(self._listeners.get(key, ()))
        for listener in listeners:
            try:
                listener(message)
            except Exception:  # a listener's bug must not fail the committing request
                log.exception("outbox signal listener failed")


_bus = _Bus()


def _bus_key(url: str) -> str:
    """One bus per database: tests run several apps (several SQLite files) in one process."""
    return make_url(url).set(drivername="sqlite").render_as_string(hide_password=True)


@event.listens_for(Session, "after_commit")
def _deliver_after_commit(session: Session) -> None:
    for key, message in session.info.pop(_PENDING, ()):
        _bus.deliver(key, message)


@event.listens_for(Session, "after_rollback")
def _drop_after_rollback(session: Session) -> None:
    session.info.pop(_PENDING, None)


# --- Listening (the worker) --------------------------------------------------------------------


def _asyncpg_dsn(database_url: str) -> str:
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


async def listen(database_url: str, listener: Listener, stop: asyncio.Event) -> None:
    """Call `listener(message)` for every signal until `stop` is set. On PostgreSQL a lost
    connection is re-opened (the worker's periodic check covers the gap)."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        unsubscribe = _bus.subscribe(_bus_key(database_url), listener)
        try:
            await stop.wait()
        finally:
            unsubscribe()
        return
    import asyncpg

    delay = 0.5
    while not stop.is_set():
        try:
            connection = await asyncpg.connect(_asyncpg_dsn(database_url), timeout=10)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            log.warning("cannot LISTEN for outbox signals (%s); retrying in %.0fs", exc, delay)
            await _sleep_unless(stop, delay)
            delay = min(delay * 2, 30.0)
            continue
        delay = 0.5
        lost = asyncio.Event()

        def on_notify(*args: Any) -> None:
            listener(str(args[3]))

        def on_lost(_connection: Any, lost: asyncio.Event = lost) -> None:
            lost.set()

        try:
            connection.add_termination_listener(on_lost)
            await connection.add_listener(CHANNEL, on_notify)
            await _first_of(stop, lost)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("outbox signal connection lost: %s", exc)
        finally:
            with contextlib.suppress(Exception):
                await connection.close(timeout=2)


async def _first_of(*events: asyncio.Event) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
