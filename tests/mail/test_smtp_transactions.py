"""The SMTP transactions the sender runs itself (app/mail/transport.py): MAIL, RCPT and DATA in
one write when the relay offers PIPELINING (RFC 2920), one at a time when it does not; every
refusal classified the same way on both paths, and the session usable after it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.mail.transport import SendError, SmtpConnection, SmtpMailer
from tests.conftest import make_settings
from tests.smtp_server import SmtpServer

SENDER = "bounce+1-abc@dzaleu.test"
BODY = b"Subject: hello\r\n\r\nBonjour\r\n"


@pytest.fixture(params=[True, False], ids=["pipelining", "one-at-a-time"])
def relay(request: pytest.FixtureRequest) -> Iterator[SmtpServer]:
    server = SmtpServer(pipelining=request.param)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def connection(relay: SmtpServer, tmp_path: Path) -> AsyncIterator[SmtpConnection]:
    settings = make_settings("sqlite+aiosqlite:///:memory:", relay, tmp_path)
    opened = await SmtpMailer(settings).connect()
    assert isinstance(opened, SmtpConnection)
    yield opened
    await opened.close()


async def test_messages_go_out_on_one_session(
    relay: SmtpServer, connection: SmtpConnection
) -> None:
    for i in range(5):
        await connection.send(BODY, sender=SENDER, recipient=f"reader{i}@example.org")
    assert [r.rcpt_tos for r in relay.received] == [[f"reader{i}@example.org"] for i in range(5)]
    assert all(r.mail_from == SENDER for r in relay.received)


async def test_each_refusal_is_classified_and_the_session_goes_on(
    relay: SmtpServer, connection: SmtpConnection
) -> None:
    relay.faults.rcpt["gone@example.org"] = "550 5.1.1 <gone@example.org>: No such user"
    relay.faults.rcpt["busy@example.org"] = "452 4.2.2 Mailbox full"
    relay.faults.rcpt["policy@example.org"] = "550 5.7.1 Relaying denied"

    with pytest.raises(SendError) as bounce:
        await connection.send(BODY, sender=SENDER, recipient="gone@example.org")
    assert (bounce.value.code, bounce.value.permanent, bounce.value.recipient) == (550, True, True)
    assert bounce.value.stage == "rcpt"

    with pytest.raises(SendError) as deferred:
        await connection.send(BODY, sender=SENDER, recipient="busy@example.org")
    assert (deferred.value.code, deferred.value.permanent) == (452, False)

    with pytest.raises(SendError) as policy:
        await connection.send(BODY, sender=SENDER, recipient="policy@example.org")
    assert (policy.value.permanent, policy.value.recipient) == (True, False)

    relay.faults.mail_from = "553 5.7.1 Sender refused"
    with pytest.raises(SendError) as sender_refused:
        await connection.send(BODY, sender=SENDER, recipient="reader@example.org")
    assert (sender_refused.value.stage, sender_refused.value.recipient) == ("mail", False)
    relay.faults.mail_from = None

    relay.faults.data = "554 5.6.0 Message content rejected"
    with pytest.raises(SendError) as content:
        await connection.send(BODY, sender=SENDER, recipient="reader@example.org")
    assert (content.value.stage, content.value.code) == ("data", 554)
    relay.faults.data = None

    # After each refusal the session was reset: the next message goes out on it, alone.
    await connection.send(BODY, sender=SENDER, recipient="reader@example.org")
    assert [r.rcpt_tos for r in relay.received] == [["reader@example.org"]]


async def test_a_relay_hanging_up_before_its_reply_is_a_connection_error(
    relay: SmtpServer, connection: SmtpConnection
) -> None:
    relay.faults.drop_before_reply_every = 1
    with pytest.raises(SendError) as dropped:
        await connection.send(BODY, sender=SENDER, recipient="reader@example.org")
    assert (dropped.value.code, dropped.value.permanent) == (None, False)
    assert dropped.value.reply.startswith("connection:")


async def test_an_address_that_would_inject_a_command_never_reaches_the_wire(
    relay: SmtpServer, connection: SmtpConnection
) -> None:
    with pytest.raises(SendError) as refused:
        await connection.send(
            BODY, sender=SENDER, recipient="x@example.org>\r\nRCPT TO:<evil@example.org"
        )
    assert refused.value.permanent
    await connection.send(BODY, sender=SENDER, recipient="reader@example.org")
    assert [r.rcpt_tos for r in relay.received] == [["reader@example.org"]]


@dataclass
class RawRelay:
    server: asyncio.Server
    mailer: SmtpMailer  # SMTP_TIMEOUT_SECONDS 1 s, SMTP_DATA_TIMEOUT_SECONDS 5 s
    accepted: list[str]  # the recipients of the copies it accepted
    reads: list[bytes]  # what each of its reads got


async def _raw_relay(
    tmp_path: Path,
    *,
    after_ehlo: bytes = b"",
    after_354: bytes = b"",
    after_verdict: bytes = b"",
    verdict_delay: float = 0,
) -> RawRelay:
    """A PIPELINING relay of our own that records its reads and can misbehave: talk after EHLO
    or after its 354 before the content (a reply to no command: it then refuses the content),
    or take its time over the final verdict."""
    accepted: list[str] = []
    reads: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 relay ESMTP\r\n")
        in_data, recipient = False, ""
        while chunk := await reader.read(65536):
            reads.append(chunk)
            for line in chunk.split(b"\r\n")[:-1]:
                if in_data:
                    if line == b".":
                        in_data = False
                        await asyncio.sleep(verdict_delay)
                        if after_354:
                            writer.write(b"550 5.7.1 content refused (the real verdict)\r\n")
                        else:
                            accepted.append(recipient)
                            writer.write(b"250 2.0.0 queued\r\n" + after_verdict)
                    continue
                verb = line[:4].upper()
                if verb == b"EHLO":
                    writer.write(b"250-relay\r\n250-PIPELINING\r\n250 8BITMIME\r\n" + after_ehlo)
                elif verb == b"DATA":
                    in_data = True
                    writer.write(b"354 go ahead\r\n" + after_354)
                elif verb == b"RCPT":
                    recipient = line.decode().partition("<")[2].rstrip(">")
                    writer.write(b"250 ok\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                else:
                    writer.write(b"250 ok\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = make_settings("sqlite+aiosqlite:///:memory:", SmtpServer(port=port), tmp_path)
    settings.smtp_timeout_seconds = 1.0
    settings.smtp_data_timeout_seconds = 5.0
    return RawRelay(server, SmtpMailer(settings), accepted, reads)


async def test_pipelined_commands_share_one_write(tmp_path: Path) -> None:
    """What reaches the relay in one read: MAIL, RCPT and DATA together when it offers
    PIPELINING."""
    relay = await _raw_relay(tmp_path)
    async with relay.server:
        connection = await relay.mailer.connect()
        await connection.send(BODY, sender=SENDER, recipient="reader@example.org")
        await connection.close()
    wanted = f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<reader@example.org>\r\nDATA\r\n".encode()
    assert wanted in relay.reads, relay.reads
    assert relay.accepted == ["reader@example.org"]


async def _connect_and_send(mailer: SmtpMailer, reader: str) -> None:
    """Out of step at once (its words came with EHLO's reply): the session does not open;
    later: the copy tried on it fails."""
    connection = await mailer.connect()
    await asyncio.sleep(0.05)  # the relay's extra words arrive before ours
    try:
        await connection.send(BODY, sender=SENDER, recipient=reader)
    finally:
        await connection.close()


@pytest.mark.parametrize(
    "talk",
    [
        {"after_354": b"250 2.0.0 ok\r\n"},
        {"after_ehlo": b"250 2.1.5 recipient ok\r\n"},
        {"after_ehlo": b"421 4.3.2 shutting down\r\n"},
    ],
    ids=["after-354", "after-ehlo", "421-while-idle"],
)
async def test_a_reply_to_no_command_ends_the_session_and_nothing_is_taken_as_sent(
    tmp_path: Path, talk: dict[str, Any]
) -> None:
    """Taken in order, a reply the relay sends out of turn would answer the next command: a
    refusal read as "250 queued" (a copy recorded sent and lost), a "550" charged to the next
    reader. The session ends instead, the copy is a connection error to try again."""
    relay = await _raw_relay(tmp_path, **talk)
    async with relay.server:
        for reader in ("first@example.org", "second@example.org"):
            started = asyncio.get_running_loop().time()
            with pytest.raises(SendError) as failed:
                await _connect_and_send(relay.mailer, reader)
            assert (failed.value.code, failed.value.permanent) == (None, False)
            assert failed.value.recipient is False
            assert "out of step" in failed.value.reply
            assert asyncio.get_running_loop().time() - started < 0.5  # no wait for a QUIT
    assert relay.accepted == []


async def test_a_copy_accepted_just_before_a_421_is_sent_once(tmp_path: Path) -> None:
    """A relay may say 421 and hang up at any time (RFC 5321, 3.8): right after "250 queued"
    in the same read, the copy stands delivered and only the session ends."""
    relay = await _raw_relay(tmp_path, after_verdict=b"421 4.3.2 closing\r\n")
    async with relay.server:
        connection = await relay.mailer.connect()
        assert isinstance(connection, SmtpConnection)
        await connection.send(BODY, sender=SENDER, recipient="reader@example.org")
        assert not connection.usable
        await connection.close()
    assert relay.accepted == ["reader@example.org"]


async def test_a_slow_verdict_after_the_content_is_awaited_not_sent_again(
    tmp_path: Path,
) -> None:
    """SMTP_TIMEOUT_SECONDS (1 s here) bounds the commands; the relay's verdict on the content
    may take SMTP_DATA_TIMEOUT_SECONDS (5 s): a copy given up on would be sent twice."""
    relay = await _raw_relay(tmp_path, verdict_delay=1.5)
    async with relay.server:
        connection = await relay.mailer.connect()
        await connection.send(BODY, sender=SENDER, recipient="reader@example.org")
        await connection.close()
    assert relay.accepted == ["reader@example.org"]
