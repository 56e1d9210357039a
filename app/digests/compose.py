"""A digest's copies: the template encoded once per (digest, language), then each reader's copy
filled in (name, unsubscribe link, Message-ID), and the test copy for a sample reader."""

from __future__ import annotations

from collections.abc import Sequence

from app.addresses import header_safe
from app.config import Settings
from app.digests.links import click_values, direct_values, open_value, tracks_clicks
from app.mail.headers import list_headers, list_unsubscribe_header
from app.mail.message import MessageTemplate, build_message
from app.mail.personalize import fill
from app.mail.render import RenderedEmail
from app.outbox.identity import message_id_for
from app.security import Tokens
from app.subscribers.service import Recipient
from app.subscriptions.links import (
    preferences_url,
    sample_preferences_url,
    sample_unsubscribe_url,
    unsubscribe_url,
)

SAMPLE_NAMES = {"fr": "Camille", "en": "Alex"}
SAMPLE_EMAIL = "reader@example.org"


def recipient_values(
    *, name: str | None, email: str, unsubscribe_url: str, preferences_url: str
) -> dict[str, str]:
    """What replaces each `personalize` placeholder for one reader."""
    clean = header_safe(name or "", max_length=200)
    return {
        "name": clean,
        "greeting_name": f" {clean}" if clean else "",
        "unsubscribe_url": unsubscribe_url,
        "preferences_url": preferences_url,
        "email": email,
    }


def sample_values(settings: Settings, tokens: Tokens, *, language: str) -> dict[str, str]:
    """The reader shown in previews and test copies."""
    return recipient_values(
        name=SAMPLE_NAMES.get(language, SAMPLE_NAMES["fr"]),
        email=SAMPLE_EMAIL,
        unsubscribe_url=sample_unsubscribe_url(settings, tokens),
        preferences_url=sample_preferences_url(settings, tokens),
    )


def fill_rendered(rendered: RenderedEmail, values: dict[str, str]) -> RenderedEmail:
    return RenderedEmail(
        subject=fill(rendered.subject, values, escape_html=False),
        html=fill(rendered.html, values, escape_html=True),
        text=fill(rendered.text, values, escape_html=False),
    )


def digest_template(settings: Settings, rendered: RenderedEmail) -> MessageTemplate:
    """The digest in one language, encoded once; `compose_copy` makes each reader's copy."""
    return MessageTemplate(
        mail_from=settings.mail_from,
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
        headers=list_headers(settings),
    )


def compose_copy(
    settings: Settings,
    tokens: Tokens,
    *,
    template: MessageTemplate,
    delivery_id: int,
    digest_id: int,
    links: Sequence[tuple[int, str]],
    recipient: Recipient,
) -> tuple[bytes, str]:
    """One subscriber's copy: their name, unsubscribe and preferences links, article links (a
    signed click link each when tracking), Message-ID; nothing re-rendered."""
    assert recipient.email is not None
    url = unsubscribe_url(settings, tokens, recipient)
    message_id = message_id_for(settings, delivery_id)
    values = recipient_values(
        name=recipient.name,
        email=recipient.email,
        unsubscribe_url=url,
        preferences_url=preferences_url(settings, tokens, recipient),
    )
    if tracks_clicks(settings):
        values.update(
            click_values(
                settings,
                tokens,
                delivery_id=delivery_id,
                digest_id=digest_id,
                positions=[position for position, _ in links],
            )
        )
    else:
        values.update(direct_values(links))
    if settings.track_opens:
        values["open_url"] = open_value(
            settings, tokens, delivery_id=delivery_id, digest_id=digest_id
        )
    message = template.render(
        to_name=recipient.name,
        to_address=recipient.email,
        message_id=message_id,
        values=values,
        headers={"List-Unsubscribe": list_unsubscribe_header(settings, url)},
    )
    return message, message_id


def compose_test_copy(
    settings: Settings,
    tokens: Tokens,
    *,
    rendered: RenderedEmail,
    links: Sequence[tuple[int, str]],
    delivery_id: int,
    to_address: str,
    language: str,
) -> tuple[bytes, str]:
    """A test copy: what a subscriber gets, for a sample reader, subject marked [TEST]; its
    article links go straight to the site (a test counts no click)."""
    values = {**sample_values(settings, tokens, language=language), **direct_values(links)}
    filled = fill_rendered(rendered, values)
    url = sample_unsubscribe_url(settings, tokens)
    message_id = message_id_for(settings, delivery_id)
    msg = build_message(
        mail_from=settings.mail_from,
        to_name=None,
        to_address=to_address,
        subject=f"[TEST] {filled.subject}",
        text=filled.text,
        html=filled.html,
        message_id=message_id,
        headers={
            "List-Unsubscribe": list_unsubscribe_header(settings, url),
            **list_headers(settings),
        },
    )
    return msg.as_bytes(), message_id
