"""How a delivery is recognised when something comes back about it: its Message-ID, and with
`VERP=true` its envelope sender.

The Message-ID is stable (the same delivery always gets the same one, so a copy resent after a
crash is recognisable) and carries a keyed tag, so a report naming one of our ids can be trusted
to name that delivery even when its outcome was never recorded.

VERP (variable envelope return path): a delivery's envelope sender is
`newsletter+<delivery id>.<tag>@domain` (the local part of `MAIL_FROM`, a `+`, the id, a keyed
tag). A bounce comes back to that address, and the id leads to the delivery and the subscriber
even when the report itself is unreadable or redacts the recipient. The tag is an HMAC of the id:
without it anyone who can write to the bounce mailbox could suppress any reader by guessing
sequential ids, so an address with no tag or a wrong one names nothing. The relay must deliver
`newsletter+anything@domain` to the `newsletter` mailbox (Postfix: `recipient_delimiter = +`).
"""

from __future__ import annotations

import re

from app.config import Settings
from app.mail.message import envelope_sender, mail_from_domain
from app.security import Tokens, message_id_tag, verp_tag

_OUR_MESSAGE_ID = re.compile(r"<nl\.(\d{1,18})\.([0-9a-f]{10})@[^>]+>")


def message_id_for(settings: Settings, delivery_id: int) -> str:
    # The same delivery (same digest + subscriber) always gets the same Message-ID, so a copy
    # resent after a crash can be recognised by the receiving side and by us.
    tag = message_id_tag(settings.secret_key, delivery_id)
    return f"<nl.{delivery_id}.{tag}@{mail_from_domain(settings.mail_from)}>"


def delivery_of_message_id(settings: Settings, tokens: Tokens, message_id: str) -> int | None:
    """The delivery a Message-ID of ours names (its keyed tag made with the current key or a
    fallback), else None."""
    shape = _OUR_MESSAGE_ID.fullmatch(message_id.strip())
    if shape and tokens.is_our_message_id_tag(int(shape.group(1)), shape.group(2)):
        return int(shape.group(1))
    return None


def verp_sender(settings: Settings, delivery_id: int) -> str:
    """The envelope sender (SMTP `MAIL FROM`) for one delivery."""
    sender = envelope_sender(settings.mail_from)
    if not settings.verp:
        return sender
    local, _, domain = sender.rpartition("@")
    return f"{local}+{delivery_id}.{verp_tag(settings.secret_key, delivery_id)}@{domain}"


def verp_delivery_id(settings: Settings, tokens: Tokens, address: str) -> int | None:
    """The delivery id a signed VERP address of ours names, or None for any other address
    (someone else's, an unsigned or wrongly signed one)."""
    local, _, domain = envelope_sender(settings.mail_from).rpartition("@")
    pattern = rf"{re.escape(local)}\+(\d{{1,18}})\.([0-9a-f]{{10}})@{re.escape(domain)}"
    match = re.fullmatch(pattern, address.strip().strip("<>"), flags=re.IGNORECASE)
    if match is None:
        return None
    delivery_id = int(match.group(1))
    return delivery_id if tokens.is_our_verp_tag(delivery_id, match.group(2)) else None
