"""The embedded default transport: a Maildir that does not exist yet works on the first send."""

from __future__ import annotations

import mailbox
from pathlib import Path

from app.mail.transport import MaildirMailer


async def test_fresh_maildir_receives_mail(tmp_path: Path) -> None:
    path = tmp_path / "var" / "mail"
    mailer = MaildirMailer(path)
    connection = await mailer.connect()
    await connection.send(
        b"Subject: hi\r\n\r\nbody\r\n", sender="news@example.org", recipient="r@example.org"
    )
    await connection.close()
    assert {p.name for p in path.iterdir()} >= {"cur", "new", "tmp"}
    [message] = list(mailbox.Maildir(path, create=False))
    assert message["Subject"] == "hi"
    assert message["Delivered-To"] == "r@example.org"
