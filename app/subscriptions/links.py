"""The reader's links this room answers: confirm, unsubscribe and preferences (signed, scoped tokens)."""

from __future__ import annotations

from app.config import Settings
from app.security import Tokens
from app.subscribers.service import Recipient


def confirm_url(settings: Settings, tokens: Tokens, recipient: Recipient) -> str:
    token = tokens.confirm_token(recipient.id, recipient.email_hash)
    return f"{settings.public_base}/confirm/{token}"


def unsubscribe_url(settings: Settings, tokens: Tokens, recipient: Recipient) -> str:
    token = tokens.unsubscribe_token(recipient.id, recipient.email_hash)
    return f"{settings.public_base}/unsubscribe/{token}"


def preferences_url(settings: Settings, tokens: Tokens, recipient: Recipient) -> str:
    token = tokens.preferences_token(recipient.id, recipient.email_hash)
    return f"{settings.public_base}/preferences/{token}"


def sample_preferences_url(settings: Settings, tokens: Tokens) -> str:
    """Like `sample_unsubscribe_url`: well formed, names nobody."""
    return f"{settings.public_base}/preferences/{tokens.preferences_token(0, '0' * 16)}"


def sample_unsubscribe_url(settings: Settings, tokens: Tokens) -> str:
    """A well-formed link that names no subscriber (previews, test copies): it opens the
    "invalid link" page and unsubscribes nobody (subscriber ids start at 1)."""
    return f"{settings.public_base}/unsubscribe/{tokens.unsubscribe_token(0, '0' * 16)}"
