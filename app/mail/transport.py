"""Where mail goes: an SMTP relay (aiosmtplib) or, by default, a Maildir under var/.

The sender only knows the `Mailer` protocol; failures come back as `SendError`s that say whether
retrying could help and whether the recipient or the setup is at fault.
"""

from __future__ import annotations

import asyncio
import logging
import mailbox
import re
import ssl
from pathlib import Path
from typing import Protocol

import aiosmtplib

from app.config import Settings, SmtpSecurity

log = logging.getLogger(__name__)

_ENHANCED = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")


class SendError(Exception):
    """A message the server did not accept.

    `permanent`: retrying the same message will not help (5xx).
    `recipient`: the recipient's mailbox is at fault (a hard bounce), not our setup.
    """

    def __init__(self, reply: str, *, code: int | None, permanent: bool, recipient: bool) -> None:
        super().__init__(reply)
        self.reply = reply[:2000]
        self.code = code
        self.permanent = permanent
        self.recipient = recipient


class Connection(Protocol):
    async def send(self, message: bytes, *, sender: str, recipient: str) -> None: ...

    async def close(self) -> None: ...


class Mailer(Protocol):
    """Opens connections; each connection sends many messages, one at a time."""

    description: str

    async def connect(self) -> Connection: ...


def _reply(exc: aiosmtplib.SMTPResponseException) -> str:
    return f"{exc.code} {exc.message}".strip()


def classify_rcpt_reply(code: int, message: str) -> SendError:
    """A reply to RCPT TO: 5xx is a hard bounce unless it speaks of policy or relaying."""
    reply = f"{code} {message}"
    if code >= 500:
        enhanced = _ENHANCED.search(message)
        # 5.7.x (security/policy: relay denied, auth required) and 5.3/5.4 (system) are our setup's
        # problem, not the reader's mailbox: never bounce a reader for them.
        setup_fault = bool(enhanced and enhanced.group(2) in ("3", "4", "7")) or (
            "relay" in message.lower() or "authentication" in message.lower()
        )
        return SendError(reply, code=code, permanent=True, recipient=not setup_fault)
    return SendError(reply, code=code, permanent=False, recipient=True)


class SmtpConnection:
    def __init__(self, client: aiosmtplib.SMTP) -> None:
        self._client = client

    async def send(self, message: bytes, *, sender: str, recipient: str) -> None:
        try:
            errors, _ = await self._client.sendmail(sender, [recipient], message)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refused = exc.recipients[0]
            raise classify_rcpt_reply(refused.code, refused.message) from exc
        except aiosmtplib.SMTPSenderRefused as exc:
            raise SendError(
                _reply(exc), code=exc.code, permanent=exc.code >= 500, recipient=False
            ) from exc
        except aiosmtplib.SMTPResponseException as exc:
            # DATA refused, or an unexpected reply: 5xx is permanent but blames nobody's mailbox.
            raise SendError(
                _reply(exc), code=exc.code, permanent=exc.code >= 500, recipient=False
            ) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise SendError(
                f"connection: {exc.__class__.__name__}: {exc}",
                code=None,
                permanent=False,
                recipient=False,
            ) from exc
        if errors:
            code, text = next(iter(errors.values()))
            raise classify_rcpt_reply(code, text)

    async def close(self) -> None:
        try:
            await self._client.quit()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            self._client.close()


class SmtpMailer:
    def __init__(self, settings: Settings) -> None:
        assert settings.smtp_host
        self.host = settings.smtp_host
        self.port = settings.smtp_port
        self.settings = settings
        self.description = f"SMTP {self.host}:{self.port} ({settings.smtp_security})"

    async def connect(self) -> Connection:
        s = self.settings
        client = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            timeout=s.smtp_timeout_seconds,
            use_tls=s.smtp_security == SmtpSecurity.tls,
            start_tls=True if s.smtp_security == SmtpSecurity.starttls else False,
            tls_context=ssl.create_default_context() if s.smtp_security != "none" else None,
        )
        try:
            await client.connect()
            if s.smtp_username:
                await client.login(s.smtp_username, s.smtp_password or "")
        except aiosmtplib.SMTPAuthenticationError as exc:
            client.close()
            raise SendError(
                f"authentication failed: {_reply(exc)}",
                code=exc.code,
                permanent=True,
                recipient=False,
            ) from exc
        except aiosmtplib.SMTPResponseException as exc:
            client.close()
            raise SendError(
                f"connect: {_reply(exc)}", code=exc.code, permanent=exc.code >= 500, recipient=False
            ) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            client.close()
            raise SendError(
                f"connect: {exc.__class__.__name__}: {exc}",
                code=None,
                permanent=False,
                recipient=False,
            ) from exc
        return SmtpConnection(client)


class MaildirConnection:
    def __init__(self, box: mailbox.Maildir) -> None:
        self._box = box

    async def send(self, message: bytes, *, sender: str, recipient: str) -> None:
        envelope = f"Return-Path: <{sender}>\r\nDelivered-To: {recipient}\r\n".encode()
        await asyncio.to_thread(self._box.add, envelope + message)

    async def close(self) -> None:
        return None


class MaildirMailer:
    """The embedded default: every message lands as a file in a Maildir (readable by any MUA)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        # Only the parent: Maildir(create=True) makes tmp/new/cur only when it creates the folder.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._box = mailbox.Maildir(self.path, create=True)
        self.description = f"Maildir {self.path}"

    async def connect(self) -> Connection:
        return MaildirConnection(self._box)


def make_mailer(settings: Settings) -> Mailer:
    if settings.uses_smtp:
        return SmtpMailer(settings)
    return MaildirMailer(settings.maildir_path)
