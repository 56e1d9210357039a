"""Turn a claimed digest or test delivery into a message, for the sender.

Each (digest, language) is rendered once per batch (the `renders` cache the sender passes in);
each copy is then that rendering with the reader's parts filled in.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel.ext.asyncio.session import AsyncSession

from app.config import Settings
from app.digests.render import render_digest
from app.mail.compose import Recipient, compose_digest, compose_test
from app.mail.render import RenderedEmail, language_or_default
from app.models import DeliveryKind, SubscriberStatus
from app.security import Tokens
from app.worker.outbox import Claimed

RenderCache = dict[tuple[int, str], RenderedEmail]


@dataclass(frozen=True, slots=True)
class Composed:
    to: str
    message: bytes
    message_id: str


async def _rendered(
    session: AsyncSession, settings: Settings, renders: RenderCache, digest_id: int, language: str
) -> RenderedEmail:
    key = (digest_id, language_or_default(language))
    if key not in renders:
        renders[key] = await render_digest(
            session, digest_id=digest_id, language=key[1], settings=settings
        )
    return renders[key]


async def compose_digest_delivery(
    session: AsyncSession,
    *,
    settings: Settings,
    tokens: Tokens,
    delivery: Claimed,
    recipient: Recipient | None,
    renders: RenderCache,
    list_id: str,
) -> Composed | None:
    """The message for a `digest` or `test` delivery; None: skip it (the reader is not, or no
    longer, a confirmed subscriber)."""
    if delivery.digest_id is None:
        return None
    if delivery.kind == DeliveryKind.test:
        if not delivery.to_address:
            return None
        language = language_or_default(delivery.language)
        rendered = await _rendered(session, settings, renders, delivery.digest_id, language)
        message, message_id = compose_test(
            settings,
            tokens,
            rendered=rendered,
            delivery_id=delivery.id,
            to_address=delivery.to_address,
            language=language,
            list_id=list_id,
        )
        return Composed(delivery.to_address, message, message_id)
    if (
        delivery.kind != DeliveryKind.digest
        or recipient is None
        or recipient.email is None
        or recipient.status != SubscriberStatus.confirmed
    ):
        return None
    language = delivery.language or recipient.language
    rendered = await _rendered(session, settings, renders, delivery.digest_id, language)
    message, message_id = compose_digest(
        settings,
        tokens,
        rendered=rendered,
        delivery_id=delivery.id,
        recipient=recipient,
        list_id=list_id,
    )
    return Composed(recipient.email, message, message_id)
