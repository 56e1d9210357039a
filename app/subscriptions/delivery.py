"""The confirmation email, as a delivery kind: only a reader still waiting to confirm gets it."""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel.ext.asyncio.session import AsyncSession

from app.addresses import header_safe
from app.bounces.service import bounce_at_send
from app.config import Settings
from app.i18n import translate
from app.mail.message import build_message
from app.mail.render import (
    RenderedEmail,
    brand_context,
    language_or_default,
    newsletter_name,
    render_email,
)
from app.models import DeliveryKind, SubscriberStatus
from app.outbox.identity import message_id_for
from app.outbox.kinds import BaseKind, Composition, Outgoing
from app.outbox.queue import Claimed
from app.security import Tokens
from app.subscribers.service import Recipient, recipients_by_id
from app.subscriptions.links import confirm_url


def render_confirmation(
    settings: Settings, *, language: str | None, name: str | None, confirm_url: str
) -> RenderedEmail:
    """The confirmation email in the reader's language (DEFAULT_LANGUAGE if they have none)."""
    language = language_or_default(language, settings.default_language)
    newsletter = newsletter_name(settings, language)
    return render_email(
        "confirm",
        language=language,
        subject=translate(
            language, "Confirm your subscription to %(newsletter)s", newsletter=newsletter
        ),
        preheader=translate(language, "One click to confirm, and you are in."),
        name=header_safe(name or "", max_length=200),
        confirm_url=confirm_url,
        valid_days=settings.confirm_token_max_age_days,
        **brand_context(settings, language),
    )


def compose_confirmation(
    settings: Settings, tokens: Tokens, *, delivery_id: int, recipient: Recipient
) -> tuple[bytes, str]:
    """The double opt-in email. No List-Unsubscribe: the reader is not on the list yet."""
    assert recipient.email is not None
    rendered = render_confirmation(
        settings,
        language=recipient.language,
        name=recipient.name,
        confirm_url=confirm_url(settings, tokens, recipient),
    )
    message_id = message_id_for(settings, delivery_id)
    msg = build_message(
        mail_from=settings.mail_from,
        to_name=recipient.name,
        to_address=recipient.email,
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
        message_id=message_id,
        headers={"Auto-Submitted": "auto-generated"},
    )
    return msg.as_bytes(), message_id


class ConfirmationKind(BaseKind):
    name = DeliveryKind.confirmation.value

    def __init__(self, settings: Settings, tokens: Tokens) -> None:
        self.settings = settings
        self.tokens = tokens

    async def compose(self, session: AsyncSession, deliveries: Sequence[Claimed]) -> Composition:
        recipients = await recipients_by_id(session, ids=(d.subscriber_id for d in deliveries))
        out = Composition()
        for delivery in deliveries:
            recipient = recipients.get(delivery.subscriber_id or -1)
            # Only a reader still waiting to confirm gets the link; one who confirmed, left or
            # bounced meanwhile gets nothing.
            if (
                recipient is None
                or recipient.email is None
                or recipient.status != SubscriberStatus.pending
            ):
                out.skipped.append((delivery.id, "subscriber not eligible"))
                continue
            with out.composing(delivery):
                message, message_id = compose_confirmation(
                    self.settings, self.tokens, delivery_id=delivery.id, recipient=recipient
                )
                out.outgoing.append(Outgoing(delivery, recipient.email, message, message_id))
        return out

    async def bounced(self, session: AsyncSession, *, delivery: Claimed, reply: str) -> None:
        await bounce_at_send(session, subscriber_id=delivery.subscriber_id, reply=reply)
