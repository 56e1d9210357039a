"""A real SMTP server (aiosmtpd) for tests, with fault injection per recipient or per session."""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    started: float = 0.0  # time.monotonic() at MAIL FROM: the exchange began
    finished: float = 0.0  # and when the message was accepted

    @property
    def message(self) -> EmailMessage:
        msg = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        return msg


@dataclass
class Faults:
    """Replies to give instead of accepting. Keys are recipient addresses (lower-case)."""

    rcpt: dict[str, str] = field(default_factory=dict)  # e.g. "550 5.1.1 No such user"
    rcpt_all: str | None = None  # the same reply to every recipient (a relay refusing all)
    rcpt_times: dict[str, int] = field(default_factory=dict)  # how many times (absent: always)
    mail_from: str | None = None  # e.g. "553 5.7.1 Sender refused"
    data: str | None = None
    drop_after_messages: int | None = None  # hang up after every Nth 250 reply
    drop_before_reply_every: int | None = None  # store every Nth message, then hang up unreplied
    delay_seconds: float = 0.0
    # A relay that throttles: above `rate_limit` recipients per second (a token bucket holding
    # `rate_burst`), RCPT gets `throttle_reply`.
    rate_limit: float | None = None
    rate_burst: float = 10.0
    throttle_reply: str = "451 4.7.1 Rate limit exceeded, slow down"
    refuse_every: int | None = None  # every Nth recipient: `refuse_reply` (a share of hard bounces)
    refuse_reply: str = "550 5.1.1 <x>: No such user"


class _Handler:
    def __init__(self, server: SmtpServer) -> None:
        self.server = server

    async def handle_EHLO(
        self, srv: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        """PIPELINING offered like Postfix does (aiosmtpd reads pipelined commands in order but
        does not say so), unless the test turns it off."""
        session.host_name = hostname
        if self.server.pipelining:
            responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_MAIL(
        self, srv: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.server.faults.mail_from:
            return self.server.faults.mail_from
        envelope.mail_from = address
        session.started = time.monotonic()  # type: ignore[attr-defined]
        return "250 OK"

    async def handle_RCPT(
        self, srv: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        faults = self.server.faults
        key = address.lower()
        if faults.rate_limit is not None and not self.server.take_token():
            return faults.throttle_reply
        if faults.refuse_every and self.server.index_of(key) % faults.refuse_every == 0:
            return faults.refuse_reply.replace("<x>", f"<{address}>")
        if faults.rcpt_all:
            return faults.rcpt_all.replace("<x>", f"<{address}>")
        if key in faults.rcpt:
            remaining = faults.rcpt_times.get(key)
            if remaining is None or remaining > 0:
                if remaining is not None:
                    faults.rcpt_times[key] = remaining - 1
                return faults.rcpt[key]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, srv: SMTP, session: Session, envelope: Envelope) -> str:
        faults = self.server.faults
        if faults.delay_seconds:
            await asyncio.sleep(faults.delay_seconds)
        if faults.data:
            return faults.data
        content = envelope.original_content or b""
        with self.server.lock:
            self.server.received.append(
                Received(
                    str(envelope.mail_from),
                    list(envelope.rcpt_tos),
                    bytes(content),
                    started=getattr(session, "started", 0.0),
                    finished=time.monotonic(),
                )
            )
            count = len(self.server.received)
        transport = srv.transport
        assert isinstance(transport, asyncio.Transport)
        if faults.drop_before_reply_every and count % faults.drop_before_reply_every == 0:
            self.server.drops += 1
            transport.abort()
        elif faults.drop_after_messages and count % faults.drop_after_messages == 0:
            self.server.drops += 1
            # After the 250 is written: the message was accepted, then the line drops.
            asyncio.get_running_loop().call_soon(transport.close)
        return "250 Message accepted"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SmtpServer:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        *,
        pipelining: bool = True,
        **kwargs: Any,
    ) -> None:
        self.host = host
        self.pipelining = pipelining
        self.port = port or free_port()
        self.faults = Faults()
        self.received: list[Received] = []
        self.drops = 0
        self.lock = threading.Lock()
        self.attempts: list[tuple[float, bool]] = []  # (monotonic time, throttled) per RCPT
        self._tokens = 0.0
        self._refilled = 0.0
        self._kwargs = kwargs
        self._controller: Controller | None = None

    def start(self) -> None:
        """Start (or restart, on the same port) the server in its own thread."""
        if self._controller is None:
            self._controller = Controller(
                _Handler(self), hostname=self.host, port=self.port, ready_timeout=10, **self._kwargs
            )
            self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def take_token(self) -> bool:
        """The throttling relay's bucket: one token per recipient, refilled at rate_limit/s."""
        limit = self.faults.rate_limit
        assert limit is not None
        now = time.monotonic()
        with self.lock:
            if not self._refilled:
                self._tokens, self._refilled = self.faults.rate_burst, now
            self._tokens = min(
                self.faults.rate_burst, self._tokens + (now - self._refilled) * limit
            )
            self._refilled = now
            allowed = self._tokens >= 1
            if allowed:
                self._tokens -= 1
            self.attempts.append((now, not allowed))
            return allowed

    @staticmethod
    def index_of(address: str) -> int:
        """N of "readerN@...", the test readers' addresses; -1 for any other."""
        local = address.split("@", 1)[0]
        digits = local.removeprefix("reader")
        return int(digits) if digits.isdigit() else -1

    def messages_to(self, address: str) -> list[EmailMessage]:
        with self.lock:
            return [
                r.message
                for r in self.received
                if address.lower() in (t.lower() for t in r.rcpt_tos)
            ]

    def clear(self) -> None:
        with self.lock:
            self.received.clear()
