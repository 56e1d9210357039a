"""VERP (variable envelope return path): one envelope sender per delivery, so a bounce names it.

With `VERP=true` a delivery's envelope sender is `newsletter+<delivery id>@domain` (the local part
of `MAIL_FROM`, a `+`, the id). A bounce comes back to that address, and the id leads to the
delivery and the subscriber even when the report itself is unreadable or redacts the recipient.
The relay must deliver `newsletter+anything@domain` to the `newsletter` mailbox (Postfix:
`recipient_delimiter = +`).
"""

from __future__ import annotations

import re

from app.config import Settings
from app.mail.message import envelope_sender


def verp_sender(settings: Settings, delivery_id: int) -> str:
    """The envelope sender (SMTP `MAIL FROM`) for one delivery."""
    sender = envelope_sender(settings.mail_from)
    if not settings.verp:
        return sender
    local, _, domain = sender.rpartition("@")
    return f"{local}+{delivery_id}@{domain}"


def verp_delivery_id(settings: Settings, address: str) -> int | None:
    """The delivery id encoded in a VERP address of ours, or None for any other address."""
    local, _, domain = envelope_sender(settings.mail_from).rpartition("@")
    pattern = rf"{re.escape(local)}\+(\d{{1,18}})@{re.escape(domain)}"
    match = re.fullmatch(pattern, address.strip().strip("<>"), flags=re.IGNORECASE)
    return int(match.group(1)) if match else None
