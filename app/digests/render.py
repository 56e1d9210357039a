"""Render a digest once per language, with placeholders for the per-reader parts.

The sender fills each copy with `personalize.fill` (a few `str.replace`), never re-rendering;
the preview fills the same rendering with a sample reader, so it shows exactly what is sent.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from app.articles.sanitize import truncate
from app.config import Settings
from app.digests import service
from app.digests.compose import fill_rendered, sample_values
from app.mail import personalize
from app.mail.render import RenderedEmail, language_or_default, render_email
from app.models import Digest, DigestArticle, as_utc
from app.security import Tokens

TITLE_MAX_CHARS = 300
# WordPress's default categories say nothing to a reader.
_UNINFORMATIVE_CATEGORIES = {"non classé", "uncategorized", "uncategorised", "sans catégorie"}

_FRENCH_MONTHS = (
    "janvier",
    "février",
    "mars",
    "avril",
    "mai",
    "juin",
    "juillet",
    "août",
    "septembre",
    "octobre",
    "novembre",
    "décembre",
)
_ENGLISH_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_DEFAULT_SUBJECTS = {
    "fr": "Les articles de la semaine - {date}",
    "en": "This week's articles - {date}",
}


def format_date(value: datetime, language: str) -> str:
    """ "30 décembre 2021" / "December 30, 2021", without depending on the system's locales."""
    value = as_utc(value)
    if language_or_default(language) == "en":
        return f"{_ENGLISH_MONTHS[value.month - 1]} {value.day}, {value.year}"
    day = "1er" if value.day == 1 else str(value.day)
    return f"{day} {_FRENCH_MONTHS[value.month - 1]} {value.year}"


def digest_date(digest: Digest, articles: Sequence[DigestArticle]) -> datetime:
    """The newest article's date, else the day the digest was composed."""
    dates = [as_utc(a.published_at) for a in articles if a.published_at is not None]
    return max(dates) if dates else as_utc(digest.created_at)


def digest_subject(digest: Digest, articles: Sequence[DigestArticle], language: str) -> str:
    if digest.subject:
        return digest.subject
    template = _DEFAULT_SUBJECTS[language_or_default(language)]
    return template.format(date=format_date(digest_date(digest, articles), language))


def _article_context(article: DigestArticle, language: str) -> dict[str, Any]:
    categories = [
        c for c in article.categories or [] if c.strip().casefold() not in _UNINFORMATIVE_CATEGORIES
    ]
    return {
        "title": truncate(article.title, TITLE_MAX_CHARS),
        "url": article.url,
        "date": format_date(article.published_at, language) if article.published_at else "",
        "categories": categories,
        # The summary, never the body: the digest invites to the site, and stays small.
        "summary": truncate(article.summary or ""),
        "author": article.author or "",
        "image_url": article.image_url or "",
    }


async def render_digest(
    session: AsyncSession,
    *,
    digest_id: int,
    language: str,
    settings: Settings,
    positions: Collection[int] | None = None,
) -> RenderedEmail:
    """The digest in one language, with `personalize` placeholders for the reader's parts.
    `positions`: only these of its articles (a reader's topics); None: all of them."""
    language = language_or_default(language)
    digest = await service.get_digest(session, digest_id=digest_id)
    articles = await service.digest_articles(session, digest_id=digest_id)
    if positions is not None:
        articles = [a for a in articles if a.position in positions]
    marks = personalize.placeholders()
    return render_email(
        "digest",
        language=language,
        digest_subject=digest_subject(digest, articles, language),
        issue_date=format_date(digest_date(digest, articles), language),
        site_name=settings.site_name,
        articles=[_article_context(a, language) for a in articles],
        greeting_name=marks["greeting_name"],
        unsubscribe_url=marks["unsubscribe_url"],
        preferences_url=marks["preferences_url"],
        intro=digest.intro or "",
        organization_address=settings.organization_address.strip(),
    )


async def preview_digest(
    session: AsyncSession, *, digest_id: int, language: str, settings: Settings, tokens: Tokens
) -> RenderedEmail:
    """Exactly what a subscriber gets, filled for a sample reader with a harmless link."""
    rendered = await render_digest(
        session, digest_id=digest_id, language=language, settings=settings
    )
    return fill_rendered(rendered, sample_values(settings, tokens, language=language))
