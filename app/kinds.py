"""Every kind of email the service sends, registered by the room that owns it.

The composition root of the outbox: the sender gets this list and knows nothing else of the
domains. A new kind of email is a class in its own room (see app/outbox/kinds.py) and one line
here.
"""

from __future__ import annotations

from app.alerts.delivery import AlertKind
from app.config import Settings
from app.digests.delivery import digest_kinds
from app.outbox.kinds import Kinds
from app.security import Tokens
from app.subscriptions.delivery import ConfirmationKind


def delivery_kinds(settings: Settings, tokens: Tokens) -> Kinds:
    return Kinds(
        [
            ConfirmationKind(settings, tokens),
            *digest_kinds(settings, tokens),
            AlertKind(settings),
        ]
    )
