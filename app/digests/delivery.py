"""Turn a claimed digest or test delivery into a message, for the sender.

Each (digest, language) is rendered and MIME-encoded once (the sender's `RenderCache`); each
copy is then that template with the reader's parts filled in (`MessageTemplate.render`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from sqlmodel.ext.asyncio.session import AsyncSession

from app.config import Settings
from app.digests.render import render_digest
from app.mail.compose import Recipient, compose_digest, compose_test, digest_template
from app.mail.message import MessageTemplate
from app.mail.render import RenderedEmail, language_or_default
from app.models import DeliveryKind, SubscriberStatus
from app.security import Tokens
from app.worker.outbox import Claimed


@dataclass(frozen=True, slots=True)
class DigestRendering:
    rendered: RenderedEmail  # with placeholders: for test copies (slow path, a handful)
    template: MessageTemplate  # encoded once: for subscribers' copies (the hot path)


class RenderCache:
    """Renderings per (digest, language), kept across batches: a digest's articles are frozen
    when it is composed, so a rendering stays valid for the whole send."""

    def __init__(self, max_entries: int = 16) -> None:
        self._entries: OrderedDict[tuple[int, str], DigestRendering] = OrderedDict()
        self._max = max_entries

    async def get(
        self, session: AsyncSession, settings: Settings, digest_id: int, language: str, list_id: str
    ) -> DigestRendering:
        key = (digest_id, language_or_default(language))
        entry = self._entries.get(key)
        if entry is None:
            rendered = await render_digest(
                session, digest_id=digest_id, language=key[1], settings=settings
            )
            entry = DigestRendering(rendered, digest_template(settings, rendered, list_id=list_id))
            self._entries[key] = entry
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        self._entries.move_to_end(key)
        return entry


@dataclass(frozen=True, slots=True)
class Composed:
    to: str
    message: bytes
    message_id: str
    wire_ready: bool = False  # a MessageTemplate copy: CRLF only, no line opening with "."


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
        rendering = await renders.get(session, settings, delivery.digest_id, language, list_id)
        message, message_id = compose_test(
            settings,
            tokens,
            rendered=rendering.rendered,
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
    rendering = await renders.get(session, settings, delivery.digest_id, language, list_id)
    message, message_id = compose_digest(
        settings,
        tokens,
        template=rendering.template,
        delivery_id=delivery.id,
        recipient=recipient,
    )
    return Composed(recipient.email, message, message_id, wire_ready=True)
