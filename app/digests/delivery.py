"""Digest copies and test copies, as delivery kinds.

Each (digest, language, set of articles) is rendered and MIME-encoded once (`RenderCache`, kept
across batches: a digest's articles are frozen when it is composed; a reader with topics gets only
the articles in them, and nothing when none is); each copy is then that template with the
reader's parts filled in (`MessageTemplate.render`, microseconds). A digest copy goes only to a
reader who is still confirmed, and only while its digest is `sending`; test copies go out
whatever the digest's status (they are how a draft is checked).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.alerts import service as alerts
from app.bounces.service import bounce_at_send, soft_bounce_at_send
from app.config import Settings
from app.digests import service
from app.digests.compose import compose_copy, compose_test_copy, digest_template
from app.digests.render import digest_links, render_digest
from app.mail.message import MessageTemplate
from app.mail.render import RenderedEmail, language_or_default
from app.models import Delivery, DeliveryKind, Digest, DigestStatus, SubscriberStatus
from app.outbox.kinds import BaseKind, Composition, Outgoing
from app.outbox.queue import Claimed
from app.security import Tokens
from app.subscribers.service import recipients_by_id
from app.topics import topic_keys

NOTHING_IN_TOPICS = "nothing in the reader's topics"


@dataclass(frozen=True, slots=True)
class DigestRendering:
    rendered: RenderedEmail  # with placeholders, as rendered
    template: MessageTemplate  # encoded once: for subscribers' copies (the hot path)
    links: list[tuple[int, str]]  # (position, URL) of each article link, from the frozen copy


RenderKey = tuple[int, str, frozenset[int] | None]  # digest, language, positions (None: all)


class RenderCache:
    """Renderings per (digest, language, set of articles), shared by the digest and test kinds
    of one worker. Readers with different topics that pick the same articles share one."""

    def __init__(self, settings: Settings, max_entries: int = 64) -> None:
        self.settings = settings
        self._entries: OrderedDict[RenderKey, DigestRendering] = OrderedDict()
        self._max = max_entries
        # Each digest's articles' topic keys by position (frozen with the digest).
        self._categories: OrderedDict[int, list[tuple[int, frozenset[str]]]] = OrderedDict()

    async def positions_for(
        self, session: AsyncSession, digest_id: int, topics: Sequence[str]
    ) -> frozenset[int] | None:
        """The positions of the digest's articles in these topics; None for all of them (a
        reader without topics, or whose topics cover every article)."""
        if not topics:
            return None
        articles = self._categories.get(digest_id)
        if articles is None:
            articles = [
                (a.position, topic_keys(a.categories or []))
                for a in await service.digest_articles(session, digest_id=digest_id)
            ]
            self._categories[digest_id] = articles
            while len(self._categories) > self._max:
                self._categories.popitem(last=False)
        keys = topic_keys(topics)
        chosen = frozenset(p for p, categories in articles if categories & keys)
        return None if len(chosen) == len(articles) else chosen

    async def get(
        self,
        session: AsyncSession,
        digest_id: int,
        language: str,
        positions: frozenset[int] | None = None,
    ) -> DigestRendering:
        key = (
            digest_id,
            language_or_default(language, self.settings.default_language),
            positions,
        )
        entry = self._entries.get(key)
        if entry is None:
            rendered = await render_digest(
                session,
                digest_id=digest_id,
                language=key[1],
                settings=self.settings,
                positions=positions,
            )
            links = await digest_links(session, digest_id=digest_id)
            entry = DigestRendering(rendered, digest_template(self.settings, rendered), links)
            self._entries[key] = entry
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        self._entries.move_to_end(key)
        return entry


class DigestKind(BaseKind):
    """One confirmed subscriber's copy of a digest being sent."""

    name = DeliveryKind.digest.value
    stops_with_send = True
    bounce_rate_every = 5.0  # seconds between two looks at a send's bounce rate (per worker)

    def __init__(self, settings: Settings, tokens: Tokens, renders: RenderCache) -> None:
        self.settings = settings
        self.tokens = tokens
        self.renders = renders
        self._bounce_rate_checked: dict[int, float] = {}

    def claim_filter(self) -> sa.ColumnElement[bool]:
        # A paused or cancelled digest's copies wait (or were skipped by the cancel).
        sending = select(Digest.id).where(Digest.status == DigestStatus.sending)
        return col(Delivery.digest_id).in_(sending)

    async def compose(self, session: AsyncSession, deliveries: Sequence[Claimed]) -> Composition:
        recipients = await recipients_by_id(session, ids=(d.subscriber_id for d in deliveries))
        out = Composition()
        for delivery in deliveries:
            recipient = recipients.get(delivery.subscriber_id or -1)
            if (
                delivery.digest_id is None
                or recipient is None
                or recipient.email is None
                or recipient.status != SubscriberStatus.confirmed
            ):
                out.skipped.append((delivery.id, "subscriber not eligible"))
                continue
            with out.composing(delivery):
                positions = await self.renders.positions_for(
                    session, delivery.digest_id, recipient.topics
                )
                if positions is not None and not positions:
                    # Nothing in this reader's topics today: no email rather than an empty one.
                    out.skipped.append((delivery.id, NOTHING_IN_TOPICS))
                    continue
                rendering = await self.renders.get(
                    session,
                    delivery.digest_id,
                    delivery.language or recipient.language,
                    positions,
                )
                message, message_id = compose_copy(
                    self.settings,
                    self.tokens,
                    template=rendering.template,
                    delivery_id=delivery.id,
                    digest_id=delivery.digest_id,
                    links=rendering.links,
                    recipient=recipient,
                )
                out.outgoing.append(
                    Outgoing(delivery, recipient.email, message, message_id, wire_ready=True)
                )
        return out

    async def bounced(self, session: AsyncSession, *, delivery: Claimed, reply: str) -> None:
        await bounce_at_send(
            session, subscriber_id=delivery.subscriber_id, digest_id=delivery.digest_id, reply=reply
        )
        if delivery.digest_id is not None and self._bounce_rate_due(delivery.digest_id):
            await alerts.check_bounce_rate(
                session, settings=self.settings, digest_id=delivery.digest_id
            )

    async def soft_bounced(self, session: AsyncSession, *, delivery: Claimed, reply: str) -> None:
        await soft_bounce_at_send(
            session,
            subscriber_id=delivery.subscriber_id,
            digest_id=delivery.digest_id,
            reply=reply,
            soft_bounce_limit=self.settings.soft_bounce_limit,
        )

    def _bounce_rate_due(self, digest_id: int) -> bool:
        """At most one look at a send's bounce rate per `bounce_rate_every` seconds per worker:
        it counts the send's rows, and a bad list bounces thousands of times."""
        now = time.monotonic()
        last = self._bounce_rate_checked.get(digest_id)
        if last is not None and now - last < self.bounce_rate_every:
            return False
        self._bounce_rate_checked[digest_id] = now
        return True

    async def pause_send(self, session: AsyncSession, *, send_id: int, reason: str) -> bool:
        return await service.pause_digest(session, digest_id=send_id, reason=reason)

    async def halted_sends(self, session: AsyncSession, *, send_ids: Iterable[int]) -> set[int]:
        return await service.halted_digests(session, digest_ids=send_ids)

    async def released(self, session: AsyncSession, *, ids: Sequence[int]) -> None:
        await service.skip_cancelled_copies(session, ids=ids)

    async def finish_sends(self, session: AsyncSession, *, send_ids: Iterable[int]) -> None:
        await service.finish_completed_digests(session, digest_ids=send_ids)


class TestCopyKind(BaseKind):
    """A copy of a digest, marked [TEST], to an editor's address, for a sample reader."""

    name = DeliveryKind.test.value

    def __init__(self, settings: Settings, tokens: Tokens, renders: RenderCache) -> None:
        self.settings = settings
        self.tokens = tokens
        self.renders = renders

    async def compose(self, session: AsyncSession, deliveries: Sequence[Claimed]) -> Composition:
        out = Composition()
        # Rendered afresh for each batch, never from the shared cache: a draft can still be
        # edited (PATCH) between two test copies, and a cached draft would then be stale for
        # the send. (A digest's copies are cached only once it is sending: no edit then.)
        fresh: dict[tuple[int, str], RenderedEmail] = {}
        links: dict[int, list[tuple[int, str]]] = {}
        for delivery in deliveries:
            if delivery.digest_id is None or not delivery.to_address:
                out.skipped.append((delivery.id, "no digest or address"))
                continue
            language = language_or_default(delivery.language, self.settings.default_language)
            with out.composing(delivery):
                key = (delivery.digest_id, language)
                if delivery.digest_id not in links:
                    links[delivery.digest_id] = await digest_links(
                        session, digest_id=delivery.digest_id
                    )
                if key not in fresh:
                    fresh[key] = await render_digest(
                        session,
                        digest_id=delivery.digest_id,
                        language=language,
                        settings=self.settings,
                    )
                message, message_id = compose_test_copy(
                    self.settings,
                    self.tokens,
                    rendered=fresh[key],
                    links=links[delivery.digest_id],
                    delivery_id=delivery.id,
                    to_address=delivery.to_address,
                    language=language,
                )
                out.outgoing.append(Outgoing(delivery, delivery.to_address, message, message_id))
        return out


def digest_kinds(settings: Settings, tokens: Tokens) -> list[BaseKind]:
    """The kinds this room registers (app/kinds.py), sharing one render cache."""
    renders = RenderCache(settings)
    return [DigestKind(settings, tokens, renders), TestCopyKind(settings, tokens, renders)]
