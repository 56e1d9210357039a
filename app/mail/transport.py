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
from aiosmtplib.protocol import LINE_ENDINGS_REGEX, PERIOD_REGEX

from app.config import Settings, SmtpSecurity

log = logging.getLogger(__name__)

_ENHANCED = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")


class SendError(Exception):
    """A message the server did not accept.

    `permanent`: retrying the same message will not help (5xx).
    `recipient`: the recipient's mailbox is at fault (a hard bounce), not our setup.
    """

    def __init__(
        self,
        reply: str,
        *,
        code: int | None,
        permanent: bool,
        recipient: bool,
        stage: str = "session",
    ) -> None:
        super().__init__(reply)
        self.reply = reply[:2000]
        self.code = code
        self.permanent = permanent
        self.recipient = recipient
        self.stage = stage  # connect | mail | rcpt | data | session


class Connection(Protocol):
    async def send(
        self, message: bytes, *, sender: str, recipient: str, wire_ready: bool = False
    ) -> None: ...

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
        return SendError(reply, code=code, permanent=True, recipient=not setup_fault, stage="rcpt")
    return SendError(reply, code=code, permanent=False, recipient=True, stage="rcpt")


def _refused(reply: aiosmtplib.SMTPResponse, *, stage: str) -> SendError:
    """A refusal that blames the sender or the content, never the reader's mailbox."""
    return SendError(
        f"{reply.code} {reply.message}",
        code=reply.code,
        permanent=reply.code >= 500,
        recipient=False,
        stage=stage,
    )


def prepare_data(message: bytes, *, wire_ready: bool = False) -> bytes:
    """The DATA payload: CRLF line ends, leading dots doubled (RFC 5321 4.5.2), ".\r\n" after.

    Messages built here already use CRLF and rarely have a line starting with ".", so two cheap
    scans replace the two full regex passes a generic client makes over every message; a
    `MessageTemplate` copy (wire_ready) needs neither."""
    if wire_ready:
        return message + b".\r\n"
    crlf = message.count(b"\r\n")
    if message.count(b"\n") != crlf or message.count(b"\r") != crlf:  # a bare CR or LF somewhere
        message = LINE_ENDINGS_REGEX.sub(b"\r\n", message)
    if message.startswith(b".") or b"\n." in message:
        message = PERIOD_REGEX.sub(b"..", message)
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    return message + b".\r\n"


class SmtpConnection:
    """One SMTP session reused for many single-recipient transactions."""

    def __init__(self, client: aiosmtplib.SMTP, *, timeout: float) -> None:
        self._client = client
        self._timeout = timeout

    async def send(
        self, message: bytes, *, sender: str, recipient: str, wire_ready: bool = False
    ) -> None:
        try:
            if sender.isascii() and recipient.isascii():
                # One deadline for the whole exchange: a wait_for per reply costs a Task each
                # on Python 3.11, four per message on the hot path.
                async with asyncio.timeout(self._timeout):
                    await self._transaction(
                        message, sender=sender, recipient=recipient, wire_ready=wire_ready
                    )
            else:  # internationalised addresses: the library negotiates SMTPUTF8
                await self._library_sendmail(message, sender=sender, recipient=recipient)
        except SendError:
            raise
        except aiosmtplib.SMTPResponseException as exc:
            self._client.close()
            raise SendError(
                _reply(exc), code=exc.code, permanent=exc.code >= 500, recipient=False
            ) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError, ValueError) as exc:
            self._client.close()
            raise SendError(
                f"connection: {exc.__class__.__name__}: {exc}",
                code=None,
                permanent=False,
                recipient=False,
            ) from exc

    async def _command(self, *args: bytes) -> aiosmtplib.SMTPResponse:
        protocol = self._client.protocol
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        # execute_command refuses CR/LF and other control characters in arguments. No timeout
        # here: `send` puts one deadline on the whole transaction.
        return await protocol.execute_command(*args, timeout=None)

    async def _transaction(
        self, message: bytes, *, sender: str, recipient: str, wire_ready: bool
    ) -> None:
        reply = await self._command(b"MAIL", b"FROM:<" + sender.encode() + b">")
        if reply.code != 250:
            await self._reset()
            raise _refused(reply, stage="mail")
        reply = await self._command(b"RCPT", b"TO:<" + recipient.encode() + b">")
        if reply.code not in (250, 251):
            await self._reset()
            raise classify_rcpt_reply(reply.code, reply.message)
        reply = await self._command(b"DATA")
        if reply.code != 354:
            await self._reset()
            raise _refused(reply, stage="data")
        protocol = self._client.protocol
        assert protocol is not None
        protocol.write(prepare_data(message, wire_ready=wire_ready))
        reply = await protocol.read_response(timeout=None)
        if reply.code != 250:
            # Refused after the content: the content or our setup, not the reader's mailbox.
            raise _refused(reply, stage="data")

    async def _reset(self) -> None:
        """RSET after a refused step, so the session can carry the next transaction."""
        try:
            await self._command(b"RSET")
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            self._client.close()

    async def _library_sendmail(self, message: bytes, *, sender: str, recipient: str) -> None:
        try:
            errors, _ = await self._client.sendmail(sender, [recipient], message)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refused = exc.recipients[0]
            raise classify_rcpt_reply(refused.code, refused.message) from exc
        except aiosmtplib.SMTPSenderRefused as exc:
            raise SendError(
                _reply(exc), code=exc.code, permanent=exc.code >= 500, recipient=False
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
            if client.last_ehlo_response is None:
                await client.ehlo()  # transactions below are sent as plain commands
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
        return SmtpConnection(client, timeout=s.smtp_timeout_seconds)


class MaildirConnection:
    def __init__(self, box: mailbox.Maildir) -> None:
        self._box = box

    async def send(
        self, message: bytes, *, sender: str, recipient: str, wire_ready: bool = False
    ) -> None:
        envelope = f"Return-Path: <{sender}>\r\nDelivered-To: {recipient}\r\n".encode()
        await asyncio.to_thread(self._box.add, envelope + message)

    async def close(self) -> None:
        return None


class MaildirMailer:
    """The embedded default: every message lands as a file in a Maildir (readable by any MUA)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        # mailbox.Maildir(create=True) only makes tmp/new/cur when the folder itself is new.
        for sub in ("tmp", "new", "cur"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)
        self._box = mailbox.Maildir(self.path, create=False)
        self.description = f"Maildir {self.path}"

    async def connect(self) -> Connection:
        return MaildirConnection(self._box)


def make_mailer(settings: Settings) -> Mailer:
    if settings.uses_smtp:
        return SmtpMailer(settings)
    return MaildirMailer(settings.maildir_path)
