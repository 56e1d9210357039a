"""MIME assembly: multipart/alternative (text first, then HTML) with the headers mail needs."""

from __future__ import annotations

import re
import uuid
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, formataddr, make_msgid, parseaddr

from app.models import utcnow

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def header_safe(value: str, *, max_length: int = 900) -> str:
    """Collapse CR, LF and other control characters: no value can add or split a header.

    Also break RFC 2047 encoded-word openers: the email package decodes `=?utf-8?q?=0D=0A?=`
    when a header is set and writes the decoded CR LF out raw, a header injection."""
    return _CONTROL.sub(" ", value).replace("=?", "= ?").strip()[:max_length]


def mail_from_domain(mail_from: str) -> str:
    _, address = parseaddr(mail_from)
    return address.rpartition("@")[2] or "localhost"


def envelope_sender(mail_from: str) -> str:
    return parseaddr(mail_from)[1]


def new_message_id(mail_from: str) -> str:
    return make_msgid(idstring=uuid.uuid4().hex[:12], domain=mail_from_domain(mail_from))


def format_address(name: str | None, email: str) -> str:
    if name:
        return formataddr((header_safe(name, max_length=200), email))
    return email


def build_message(
    *,
    mail_from: str,
    to: str,
    subject: str,
    text: str,
    html: str,
    message_id: str,
    headers: dict[str, str] | None = None,
) -> EmailMessage:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = header_safe(mail_from)
    msg["To"] = to
    msg["Subject"] = header_safe(subject, max_length=300)
    msg["Date"] = format_datetime(utcnow())
    msg["Message-ID"] = message_id
    for key, value in (headers or {}).items():
        msg[key] = header_safe(value)
    msg.set_content(text, subtype="plain", charset="utf-8", cte="quoted-printable")
    msg.add_alternative(html, subtype="html", charset="utf-8", cte="quoted-printable")
    return msg


def address_of(email: str) -> Address:
    local, _, domain = email.rpartition("@")
    return Address(username=local, domain=domain)
