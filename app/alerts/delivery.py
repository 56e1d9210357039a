"""The alert email, as a delivery kind: one incident told to one editor's address."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.alerts.messages import alert_text
from app.config import Settings
from app.mail.message import build_message
from app.models import AlertIncident, Delivery, DeliveryKind
from app.outbox.identity import message_id_for
from app.outbox.kinds import BaseKind, Composition, Outgoing
from app.outbox.queue import Claimed


def compose_alert(
    settings: Settings, *, delivery_id: int, to_address: str, incident: AlertIncident
) -> tuple[bytes, str]:
    """multipart/alternative (text, then HTML), in DEFAULT_LANGUAGE, with a Message-ID."""
    params = {
        **incident.params,
        "site": settings.brand_name or "newsletter",
        "public_url": settings.public_base,
    }
    subject, text = alert_text(incident.kind, settings.default_language, params)
    html = "".join(f"<p>{escape(p).replace(chr(10), '<br>')}</p>" for p in text.split("\n\n"))
    message_id = message_id_for(settings, delivery_id)
    msg = build_message(
        mail_from=settings.mail_from,
        to_name=None,
        to_address=to_address,
        subject=subject,
        text=text + "\n",
        html=f'<!doctype html><html lang="{settings.default_language}"><body>{html}</body></html>',
        message_id=message_id,
        # RFC 3834: no vacation auto-replies to the service.
        headers={"Auto-Submitted": "auto-generated"},
    )
    return msg.as_bytes(), message_id


class AlertKind(BaseKind):
    name = DeliveryKind.alert.value

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def compose(self, session: AsyncSession, deliveries: Sequence[Claimed]) -> Composition:
        rows = (
            await session.exec(
                select(Delivery.id, AlertIncident)
                .join(AlertIncident, col(AlertIncident.id) == col(Delivery.alert_id))
                .where(col(Delivery.id).in_([d.id for d in deliveries]))
            )
        ).all()
        incidents = {delivery_id: incident for delivery_id, incident in rows}
        out = Composition()
        for delivery in deliveries:
            incident = incidents.get(delivery.id)
            if incident is None or not delivery.to_address:
                out.skipped.append((delivery.id, "no incident or address"))
                continue
            with out.composing(delivery):
                message, message_id = compose_alert(
                    self.settings,
                    delivery_id=delivery.id,
                    to_address=delivery.to_address,
                    incident=incident,
                )
                out.outgoing.append(Outgoing(delivery, delivery.to_address, message, message_id))
        return out
