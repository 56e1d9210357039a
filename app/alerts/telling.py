"""The worker's periodic job for alerts: tell new incidents (outbox rows, webhook POSTs)."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, or_, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.alerts.messages import alert_text
from app.alerts.service import tell_pending
from app.config import Settings
from app.models import AlertIncident, WebhookStatus, utcnow
from app.outbound import post_json

log = logging.getLogger("app.alerts")

TELL_EVERY_SECONDS = 2.0
WEBHOOK_MAX_ATTEMPTS = 5
WEBHOOK_RETRY_SECONDS = 30.0  # then 60, 120, 240: about 8 minutes in all
WEBHOOK_HOLD = timedelta(seconds=60)  # longer than a post may take (10 s timeout)


def webhook_payload(settings: Settings, incident: AlertIncident) -> dict[str, Any]:
    params = {
        **incident.params,
        "site": settings.brand_name or "newsletter",
        "public_url": settings.public_base,
    }
    subject, text = alert_text(incident.kind, settings.default_language, params)
    return {
        "incident": incident.key,
        "kind": incident.kind,
        "opened_at": incident.opened_at.isoformat(),
        "site": settings.brand_name or "newsletter",
        "subject": subject,
        "text": text,
        "params": incident.params,
    }


async def post_webhooks(settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    """POST each incident whose webhook is due; a failure is retried with backoff, up to
    WEBHOOK_MAX_ATTEMPTS posts. The posts made."""
    if not settings.alert_webhook_url:
        return 0
    now = utcnow()
    async with sessionmaker() as session:
        due = (
            await session.exec(
                select(AlertIncident).where(
                    AlertIncident.webhook_status == WebhookStatus.pending,
                    or_(
                        col(AlertIncident.webhook_next_at).is_(None),
                        col(AlertIncident.webhook_next_at) <= now,
                    ),
                )
            )
        ).all()
        claimed: list[AlertIncident] = []
        for incident in due:
            # Claimed by one conditional UPDATE that also holds it for WEBHOOK_HOLD: of two
            # workers, one posts, and nobody else while that post is under way.
            result = await session.execute(
                sa.update(AlertIncident)
                .where(
                    col(AlertIncident.id) == incident.id,
                    col(AlertIncident.webhook_status) == WebhookStatus.pending,
                    col(AlertIncident.webhook_attempts) == incident.webhook_attempts,
                )
                .values(
                    webhook_attempts=incident.webhook_attempts + 1,
                    webhook_next_at=now + WEBHOOK_HOLD,
                )
                .execution_options(synchronize_session=False)
            )
            if getattr(result, "rowcount", 0):
                claimed.append(incident)
        payloads = [(i.id, i.webhook_attempts + 1, webhook_payload(settings, i)) for i in claimed]
        await session.commit()
    for incident_id, attempts, payload in payloads:
        error: str | None = None
        try:
            status = await post_json(
                settings.alert_webhook_url,
                payload,
                allow_private_networks=settings.feed_allow_private_networks,
            )
            if status >= 300:
                error = f"HTTP {status}"
        except Exception as exc:  # refused address, timeout, TLS...: kept on the incident
            error = f"{exc.__class__.__name__}: {exc}"[:500]
        if error is None:
            state = WebhookStatus.sent
        elif attempts >= WEBHOOK_MAX_ATTEMPTS:
            state = WebhookStatus.failed
            log.error("alert webhook failed for good: %s", error, extra={"incident": incident_id})
        else:
            state = WebhookStatus.pending
            log.warning("alert webhook failed: %s", error, extra={"incident": incident_id})
        retry_at = utcnow() + timedelta(seconds=WEBHOOK_RETRY_SECONDS * 2 ** (attempts - 1))
        async with sessionmaker() as session:
            await session.execute(
                sa.update(AlertIncident)
                .where(col(AlertIncident.id) == incident_id)
                .values(webhook_status=state.value, webhook_error=error, webhook_next_at=retry_at)
                .execution_options(synchronize_session=False)
            )
            await session.commit()
    return len(payloads)


async def tell_once(settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    async with sessionmaker() as session:
        await tell_pending(session, settings=settings)
        await session.commit()
    await post_webhooks(settings, sessionmaker)


async def tell_incidents_forever(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], stop: asyncio.Event
) -> None:
    while not stop.is_set():
        try:
            await tell_once(settings, sessionmaker)
        except Exception:  # a database blip must not end the alerts for good
            log.exception("telling incidents failed; trying again")
        try:
            await asyncio.wait_for(stop.wait(), timeout=TELL_EVERY_SECONDS)
        except TimeoutError:
            pass


async def tell_setup_broken(settings: Settings, *, process: str, error: str) -> None:
    """For a sender that refuses to start: nobody runs the telling loop for it, so it tells now
    (the emails wait in the outbox for a sender that works; the webhook is posted at once).
    Best effort: an unreachable database only loses the alert, never hides the error."""
    from app.alerts.service import setup_broken
    from app.db import make_engine, make_sessionmaker

    engine = make_engine(settings.database_url)
    try:
        sessionmaker = make_sessionmaker(engine)
        async with sessionmaker() as session:
            await setup_broken(session, process=process, error=error)
            await session.commit()
        await tell_once(settings, sessionmaker)
    except Exception as exc:  # the command's own error message must stay the one shown
        log.debug("could not record the alert for a sender that refuses to start: %s", exc)
    finally:
        await engine.dispose()
