"""Turn a claimed delivery into the bytes to send: headers, links and per-recipient parts."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from app.config import Settings
from app.mail.message import (
    build_message,
    format_address,
    header_safe,
    mail_from_domain,
)
from app.mail.render import render_email
from app.security import Tokens


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
    tag = hashlib.sha256(f"{settings.secret_key}:{delivery_id}".encode()).hexdigest()[:10]
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
