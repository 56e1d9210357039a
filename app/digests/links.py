"""The public addresses of a digest: its archive page (`/archive/{id}-{slug}`) and its article
links, tracked (`/r/{token}`, app.clicks) or straight to the site."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from app.config import ClickTracking, Settings
from app.mail.personalize import link_field
from app.security import Tokens

SLUG_MAX_CHARS = 80
SLUG_LANGUAGE = "fr"  # one address per issue: its slug is made from the French subject
# A transparent 1x1 GIF inline: the open pixel of previews and test copies.
INERT_PIXEL = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"


def slugify(text: str) -> str:
    """ "Les articles de la semaine - 1er décembre" -> "les-articles-de-la-semaine-1er-decembre"."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return slug[:SLUG_MAX_CHARS].rstrip("-") or "digest"


def archive_path(digest_id: int, subject: str) -> str:
    return f"/archive/{digest_id}-{slugify(subject)}"


def archive_url(settings: Settings, digest_id: int, subject: str, *, language: str) -> str:
    return f"{settings.public_base}{archive_path(digest_id, subject)}?lang={language}"


def tracks_clicks(settings: Settings) -> bool:
    return settings.track_clicks != ClickTracking.off


def click_values(
    settings: Settings,
    tokens: Tokens,
    *,
    delivery_id: int,
    digest_id: int,
    positions: Sequence[int],
) -> dict[str, str]:
    """One reader's tracked article links (`link<position>` placeholders): one signed token per
    link, naming the copy and the position, never the URL (no open redirect)."""
    base = f"{settings.public_base}/r/"
    return {
        link_field(position): base + tokens.click_token(delivery_id, digest_id, position)
        for position in positions
    }


def direct_values(urls: Sequence[tuple[int, str]]) -> dict[str, str]:
    """The article links straight to the site, and an open pixel that fetches nothing: previews
    and test copies count nothing."""
    return {"open_url": INERT_PIXEL, **{link_field(position): url for position, url in urls}}


def open_value(settings: Settings, tokens: Tokens, *, delivery_id: int, digest_id: int) -> str:
    """One reader's open pixel (TRACK_OPENS)."""
    return f"{settings.public_base}/o/{tokens.open_token(delivery_id, digest_id)}"
