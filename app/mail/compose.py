"""Turn a claimed delivery into the bytes to send: headers, links and per-recipient parts."""

from __future__ import annotations

from dataclasses import dataclass

from app.config import Settings
from app.mail.message import (
    MessageTemplate,
    build_message,
    format_address,
    header_safe,
    mail_from_domain,
)
from app.mail.personalize import fill
from app.mail.render import RenderedEmail, render_email
from app.security import Tokens, message_id_tag


@dataclass(frozen=True, slots=True)
class Recipient:
    id: int
    email: str
    name: str | None
    language: str
    status: str
    email_hash: str


def stable_message_id(settings: Settings, delivery_id: int) -> str:
    # The same delivery (same digest + subscriber) always gets the same Message-ID, so a copy
    # resent after a crash can be recognised by the receiving side and by us.
    tag = message_id_tag(settings.secret_key, delivery_id)
    return f"<nl.{delivery_id}.{tag}@{mail_from_domain(settings.mail_from)}>"


def confirm_url(settings: Settings, tokens: Tokens, recipient: Recipient) -> str:
    return (
        f"{settings.public_base}/confirm/{tokens.confirm_token(recipient.id, recipient.email_hash)}"
    )


def unsubscribe_url(settings: Settings, tokens: Tokens, recipient: Recipient) -> str:
    token = tokens.unsubscribe_token(recipient.id, recipient.email_hash)
    return f"{settings.public_base}/unsubscribe/{token}"


def compose_confirmation(
    settings: Settings, tokens: Tokens, *, delivery_id: int, recipient: Recipient
) -> tuple[bytes, str]:
    """The double opt-in email. No List-Unsubscribe: the reader is not on the list yet."""
    rendered = render_email(
        "confirm",
        language=recipient.language,
        site_name=settings.site_name,
        name=header_safe(recipient.name or "", max_length=200),
        confirm_url=confirm_url(settings, tokens, recipient),
        valid_days=settings.confirm_token_max_age_days,
    )
    message_id = stable_message_id(settings, delivery_id)
    msg = build_message(
        mail_from=settings.mail_from,
        to=format_address(recipient.name, recipient.email),
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
        message_id=message_id,
        headers={"Auto-Submitted": "auto-generated"},
    )
    return msg.as_bytes(), message_id


# --- Digests -----------------------------------------------------------------------------------

SAMPLE_NAMES = {"fr": "Camille", "en": "Alex"}
SAMPLE_EMAIL = "reader@example.org"


def list_id_header(settings: Settings) -> str:
    """RFC 2919 List-Id: LIST_ID, else newsletter.<domain of MAIL_FROM>."""
    if settings.list_id and settings.list_id.strip():
        value = settings.list_id.strip()
        return value if "<" in value else f"<{value}>"
    return f"<newsletter.{mail_from_domain(settings.mail_from)}>"


def list_unsubscribe_header(settings: Settings, url: str) -> str:
    """RFC 2369 List-Unsubscribe: the one-click URL first, then the mailto if configured."""
    value = f"<{url}>"
    if settings.unsubscribe_mailto:
        address = settings.unsubscribe_mailto.strip().removeprefix("mailto:")
        value += f", <mailto:{address}?subject=unsubscribe>"
    return value


def sample_unsubscribe_url(settings: Settings, tokens: Tokens) -> str:
    """A well-formed link that names no subscriber: it opens the "invalid link" page and
    unsubscribes nobody (subscriber ids start at 1)."""
    return f"{settings.public_base}/unsubscribe/{tokens.unsubscribe_token(0, '0' * 16)}"


def recipient_values(*, name: str | None, email: str, unsubscribe_url: str) -> dict[str, str]:
    """What replaces each `personalize` placeholder for one reader."""
    clean = header_safe(name or "", max_length=200)
    return {
        "name": clean,
        "greeting_name": f" {clean}" if clean else "",
        "unsubscribe_url": unsubscribe_url,
        "email": email,
    }


def sample_values(settings: Settings, tokens: Tokens, *, language: str) -> dict[str, str]:
    """The reader shown in previews and test copies."""
    return recipient_values(
        name=SAMPLE_NAMES.get(language, SAMPLE_NAMES["fr"]),
        email=SAMPLE_EMAIL,
        unsubscribe_url=sample_unsubscribe_url(settings, tokens),
    )


def fill_rendered(rendered: RenderedEmail, values: dict[str, str]) -> RenderedEmail:
    return RenderedEmail(
        subject=fill(rendered.subject, values, escape_html=False),
        html=fill(rendered.html, values, escape_html=True),
        text=fill(rendered.text, values, escape_html=False),
    )


def _list_message(
    settings: Settings,
    *,
    filled: RenderedEmail,
    to: str,
    delivery_id: int,
    list_id: str,
    unsubscribe_url: str,
    subject: str,
) -> tuple[bytes, str]:
    message_id = stable_message_id(settings, delivery_id)
    msg = build_message(
        mail_from=settings.mail_from,
        to=to,
        subject=subject,
        text=filled.text,
        html=filled.html,
        message_id=message_id,
        headers={
            "List-Unsubscribe": list_unsubscribe_header(settings, unsubscribe_url),
            **_list_headers(settings, list_id),
        },
    )
    return msg.as_bytes(), message_id


def _list_headers(settings: Settings, list_id: str) -> dict[str, str]:
    return {
        "List-Id": list_id,
        # RFC 8058: providers may POST this body to List-Unsubscribe to unsubscribe in one click.
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        "Precedence": "bulk",  # tells auto-responders not to answer
    }


def digest_template(
    settings: Settings, rendered: RenderedEmail, *, list_id: str
) -> MessageTemplate:
    """The digest in one language, encoded once; `compose_digest` makes each reader's copy."""
    return MessageTemplate(
        mail_from=settings.mail_from,
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
        headers=_list_headers(settings, list_id),
    )


def compose_digest(
    settings: Settings,
    tokens: Tokens,
    *,
    template: MessageTemplate,
    delivery_id: int,
    recipient: Recipient,
) -> tuple[bytes, str]:
    """One subscriber's copy: their name, unsubscribe link, Message-ID; nothing re-rendered."""
    assert recipient.email is not None
    url = unsubscribe_url(settings, tokens, recipient)
    message_id = stable_message_id(settings, delivery_id)
    message = template.render(
        to=format_address(recipient.name, recipient.email),
        message_id=message_id,
        values=recipient_values(name=recipient.name, email=recipient.email, unsubscribe_url=url),
        headers={"List-Unsubscribe": list_unsubscribe_header(settings, url)},
    )
    return message, message_id


def compose_test(
    settings: Settings,
    tokens: Tokens,
    *,
    rendered: RenderedEmail,
    delivery_id: int,
    to_address: str,
    language: str,
    list_id: str,
) -> tuple[bytes, str]:
    """A test copy: what a subscriber gets, for a sample reader, subject marked [TEST]."""
    filled = fill_rendered(rendered, sample_values(settings, tokens, language=language))
    return _list_message(
        settings,
        filled=filled,
        to=to_address,
        delivery_id=delivery_id,
        list_id=list_id,
        unsubscribe_url=sample_unsubscribe_url(settings, tokens),
        subject=f"[TEST] {filled.subject}",
    )
