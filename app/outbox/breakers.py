"""Breakers that protect the sender's reputation: a send pauses itself when too many of its
copies hard-bounce or draw spam complaints. One rule, checked by workers after they record
bounces and by the bounce handling after it records complaints; the pause goes through the
send's kind (`Kind.pause_send`), the path of every other pause.

- bounces: past SEND_PAUSE_BOUNCE_RATE of the attempts, once SEND_BREAKER_MIN_ATTEMPTS copies
  were delivered or bounced;
- complaints: at SEND_PAUSE_COMPLAINT_RATE of the delivered copies, the delivered count taken
  as at least SEND_BREAKER_MIN_ATTEMPTS (two complaints on a send's first copies are not 100%).

A breaker judges what came since the send was last resumed (`send_breaker`, written by
`rebase` when a send resumes): the editor resumed knowing the figures, so the send goes on until
what comes after trips a breaker again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from sqlmodel.ext.asyncio.session import AsyncSession

from app.config import Settings
from app.models import SendBreaker, utcnow
from app.outbox import tally
from app.outbox.kinds import Kinds

log = logging.getLogger("app.outbox")


async def _baseline(session: AsyncSession, *, kind: str, send_id: int) -> tally.Counts:
    row = await session.get(SendBreaker, (kind, send_id))
    if row is None:
        return tally.Counts()
    return tally.Counts(delivered=row.delivered, bounced=row.bounced, complaints=row.complaints)


async def rebase(session: AsyncSession, *, kind: str, send_id: int) -> None:
    """The send resumes: from now on the breakers judge only what comes after."""
    now = await tally.totals(session, kind=kind, send_id=send_id)
    row = await session.get(SendBreaker, (kind, send_id))
    if row is None:
        row = SendBreaker(kind=kind, send_id=send_id)
    row.delivered, row.bounced, row.complaints = now.delivered, now.bounced, now.complaints
    row.rebased_at = utcnow()
    session.add(row)
    await session.flush()


def tripped(settings: Settings, counts: tally.Counts) -> str | None:
    """Why these counts (since the last trip) pause a send, or None."""
    floor = settings.send_breaker_min_attempts
    attempts = counts.attempts
    if attempts >= floor and counts.bounced > settings.send_pause_bounce_rate * attempts:
        return (
            f"bounce breaker: {counts.bounced} hard bounces in {attempts} attempts "
            f"({counts.bounced / attempts:.1%}, above SEND_PAUSE_BOUNCE_RATE "
            f"{settings.send_pause_bounce_rate:.1%}). Check the list's quality, then resume "
            "or cancel."
        )
    delivered = max(counts.delivered, floor)
    if counts.complaints and counts.complaints >= settings.send_pause_complaint_rate * delivered:
        return (
            f"complaint breaker: {counts.complaints} spam complaints for {counts.delivered} "
            f"delivered copies (at least SEND_PAUSE_COMPLAINT_RATE "
            f"{settings.send_pause_complaint_rate:.1%} of {delivered}). Check what was sent, "
            "then resume or cancel."
        )
    return None


async def check(
    session: AsyncSession,
    *,
    settings: Settings,
    kinds: Kinds,
    sends: Iterable[tuple[str, int]],
) -> list[tuple[str, int, str]]:
    """Pause the sends (kind, id) whose counters trip a breaker, in the caller's transaction;
    returns the (kind, id, reason) of those it paused."""
    paused: list[tuple[str, int, str]] = []
    for kind_name, send_id in set(sends):
        kind = kinds.get(kind_name)
        if kind is None or not kind.stops_with_send:
            continue
        now = await tally.totals(session, kind=kind_name, send_id=send_id)
        reason = tripped(
            settings, now.minus(await _baseline(session, kind=kind_name, send_id=send_id))
        )
        if reason is None:
            continue
        if not await kind.pause_send(session, send_id=send_id, reason=reason):
            continue  # not sending (already paused, finished, cancelled): nothing to trip
        log.error("send %s paused: %s", send_id, reason)
        paused.append((kind_name, send_id, reason))
    return paused
