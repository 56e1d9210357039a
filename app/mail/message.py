"""MIME assembly: multipart/alternative (text first, then HTML) with the headers mail needs."""

from __future__ import annotations

import binascii
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP, EmailPolicy
from email.utils import format_datetime, parseaddr
from functools import lru_cache
from html import escape as html_escape

from app.addresses import MAX_NAME_LENGTH, format_address, header_safe
from app.mail.personalize import split_placeholders
from app.models import utcnow

# Headers holding one long URL: folding them at 78 columns turns the URL into RFC 2047
# encoded-words, which no mail provider reads as a link. They stay on one (legal, <998) line.
_UNFOLDED_HEADERS = frozenset({"list-unsubscribe", "list-unsubscribe-post", "list-id"})


class _MailPolicy(EmailPolicy):
    def fold(self, name: str, value: str) -> str:
        if name.lower() in _UNFOLDED_HEADERS:
            return EmailPolicy.fold(self.clone(max_line_length=998), name, value)
        return super().fold(name, value)

    def fold_binary(self, name: str, value: str) -> bytes:
        if name.lower() in _UNFOLDED_HEADERS:
            return EmailPolicy.fold_binary(self.clone(max_line_length=998), name, value)
        return super().fold_binary(name, value)


MAIL_POLICY = _MailPolicy() + SMTP


# Cached: the sender asks for these for every message, always about the one MAIL_FROM.
@lru_cache(maxsize=8)
def mail_from_domain(mail_from: str) -> str:
    _, address = parseaddr(mail_from)
    return address.rpartition("@")[2] or "localhost"


@lru_cache(maxsize=8)
def envelope_sender(mail_from: str) -> str:
    return parseaddr(mail_from)[1]


def build_message(
    *,
    mail_from: str,
    to_name: str | None,
    to_address: str,
    subject: str,
    text: str,
    html: str,
    message_id: str,
    headers: dict[str, str] | None = None,
) -> EmailMessage:
    """One `EmailMessage`, built by the standard library: confirmation emails and test copies
    (a handful), and the reference the fast `MessageTemplate` is held equal to in the tests."""
    msg = EmailMessage(policy=MAIL_POLICY)
    msg["From"] = header_safe(mail_from)
    msg["To"] = Address(
        display_name=header_safe(to_name or "", max_length=MAX_NAME_LENGTH), addr_spec=to_address
    )
    msg["Subject"] = header_safe(subject, max_length=300)
    msg["Date"] = format_datetime(utcnow())
    msg["Message-ID"] = message_id
    for key, value in (headers or {}).items():
        msg[key] = header_safe(value)
    msg.set_content(text, subtype="plain", charset="utf-8", cte="quoted-printable")
    msg.add_alternative(html, subtype="html", charset="utf-8", cte="quoted-printable")
    return msg


_CRLF = b"\r\n"
_date: tuple[int, str] = (0, "")


def _date_now() -> str:
    """The Date header's value, formatted once a second (every copy of a send asks for it)."""
    global _date
    second = int(time.time())
    if _date[0] != second:
        _date = (second, format_datetime(datetime.fromtimestamp(second, UTC)))
    return _date[1]


def _qp(text: str) -> bytes:
    """binascii's C quoted-printable encoder, with CRLF line ends, and a "." opening a line
    written "=2E" (RFC 2045 6.7 suggests it): no line needs SMTP dot-stuffing, so the sender
    can put the bytes on the wire as they are (and a DKIM signature stays valid)."""
    encoded = binascii.b2a_qp(text.encode("utf-8"), istext=True)
    encoded = encoded.replace(b"\r\n", b"\n").replace(b"\n.", b"\n=2E")
    if encoded.startswith(b"."):
        encoded = b"=2E" + encoded[1:]
    return encoded.replace(b"\n", _CRLF)


def _fold(name: str, value: str) -> bytes:
    """One header line, RFC 2047-encoded and folded by the email package's SMTP policy."""
    header = SMTP.header_factory(name, header_safe(value))
    return SMTP.fold(name, header).encode("ascii")


class _EncodedBody:
    """A body split at its placeholders; the static stretches are QP-encoded once.

    Each stretch ends with a soft line break ("=" CRLF), which decoders remove, so the pieces
    can be joined without any encoded line growing past 76 characters (RFC 2045).
    """

    def __init__(self, text: str, *, escape_html: bool) -> None:
        pieces = split_placeholders(text)
        self.static = [_qp(piece) + b"=\r\n" if piece else b"" for piece in pieces[::2]]
        self.fields = pieces[1::2]
        self.escape_html = escape_html

    def render(self, values: Mapping[str, str]) -> bytes:
        out = [self.static[0]]
        # A digest's article link appears several times (image, title, "read more"): each
        # value is encoded once per copy.
        encoded: dict[str, bytes] = {}
        for field, static in zip(self.fields, self.static[1:], strict=True):
            piece = encoded.get(field)
            if piece is None:
                value = values.get(field, "")
                if self.escape_html:
                    value = html_escape(value, quote=True)
                piece = encoded[field] = _qp(value) + b"=\r\n" if value else b""
            out.append(piece)
            out.append(static)
        return b"".join(out)


class MessageTemplate:
    """A message rendered once (per digest and language) and copied per recipient cheaply.

    Its output is wire-ready: CRLF line ends only and no line starting with "." (see `_qp`), so
    the SMTP connection sends it without rescanning it (`send(..., wire_ready=True)`).

    Building a full `EmailMessage` per reader costs milliseconds, mostly in header objects and
    encoding; here the static headers and body stretches are encoded once, and each copy only
    encodes its few personal values (name, unsubscribe link) and joins bytes. The result is the
    same multipart/alternative (text, then HTML) that `build_message` makes; tests parse it back.
    """

    def __init__(
        self,
        *,
        mail_from: str,
        subject: str,
        text: str,
        html: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.subject = subject
        self.text = text
        self.html = html
        boundary = f"=_nl_{uuid.uuid4().hex}"
        static = [
            _fold("From", mail_from),
            _fold("Subject", subject),
            b"MIME-Version: 1.0\r\n",
            *(_fold(key, value) for key, value in (headers or {}).items()),
            f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n'.encode(),
        ]
        self._static = b"".join(static)
        self._text_head = (
            f"--{boundary}\r\n"
            'Content-Type: text/plain; charset="utf-8"\r\n'
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        ).encode()
        self._html_head = (
            f"\r\n--{boundary}\r\n"
            'Content-Type: text/html; charset="utf-8"\r\n'
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        ).encode()
        self._end = f"\r\n--{boundary}--\r\n".encode()
        self._text = _EncodedBody(text, escape_html=False)
        self._html = _EncodedBody(html, escape_html=True)

    def render(
        self,
        *,
        to_name: str | None,
        to_address: str,
        message_id: str,
        values: Mapping[str, str],
        headers: Mapping[str, str] | None = None,
        date: str | None = None,
    ) -> bytes:
        """One reader's copy. `to_address` is a validated ASCII address (app.addresses); the name
        is encoded by `format_address`, whose output is written as it is (already folded)."""
        lines = [
            f"To: {format_address(to_name, to_address)}",
            f"Date: {date or _date_now()}",
            f"Message-ID: {header_safe(message_id)}",
        ]
        lines.extend(f"{k}: {header_safe(v, max_length=990)}" for k, v in (headers or {}).items())
        head = ("\r\n".join(lines) + "\r\n").encode("ascii", "replace")
        return b"".join(
            [
                head,
                self._static,
                self._text_head,
                self._text.render(values),
                self._html_head,
                self._html.render(values),
                self._end,
            ]
        )
