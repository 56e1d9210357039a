"""The list headers every email to the list carries (RFC 2369, 2919, 8058)."""

from __future__ import annotations

from app.config import Settings
from app.mail.message import mail_from_domain


def list_id_header(settings: Settings) -> str:
    """RFC 2919 List-Id: LIST_ID, else newsletter.<domain of MAIL_FROM>."""
    if settings.list_id and settings.list_id.strip():
        value = settings.list_id.strip()
        return value if "<" in value else f"<{value}>"
    return f"<newsletter.{mail_from_domain(settings.mail_from)}>"


def list_unsubscribe_header(settings: Settings, url: str) -> str:
    """RFC 2369 List-Unsubscribe: the one-click URL first, then the mailto if configured."""
    value = f"<{url}>"
    if settings.unsubscribe_mailto:
        address = settings.unsubscribe_mailto.strip().removeprefix("mailto:")
        value += f", <mailto:{address}?subject=unsubscribe>"
    return value


def list_headers(settings: Settings) -> dict[str, str]:
    """The headers that are the same on every copy of a list email (List-Unsubscribe, which
    names the reader, is added per copy)."""
    return {
        "List-Id": list_id_header(settings),
        # RFC 8058: providers may POST this body to List-Unsubscribe to unsubscribe in one click.
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        "Precedence": "bulk",  # tells auto-responders not to answer
    }
