"""Render a digest once per language, with placeholders for the per-reader parts.

The sender fills each copy with `personalize.fill` (a few `str.replace`), never re-rendering;
the preview fills the same rendering with a sample reader, so it shows exactly what is sent.
"""

from __future__ import annotations

import html
import re
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

import nh3
from markupsafe import Markup
from sqlmodel.ext.asyncio.session import AsyncSession

from app import i18n, typography
from app.articles.sanitize import is_http_url, truncate
from app.config import Settings
from app.digests import service
from app.digests.compose import fill_rendered, sample_values
from app.digests.links import SLUG_LANGUAGE, archive_url, direct_values
from app.mail import personalize
from app.mail.personalize import link_field
from app.mail.render import RenderedEmail, brand_context, language_or_default, render_email
from app.models import Digest, DigestArticle, as_utc
from app.security import Tokens

TITLE_MAX_CHARS = 300
SHORT_SUMMARY_CHARS = 200  # the text part: one short summary each
PREHEADER_CHARS = 140
# WordPress's default categories say nothing to a reader.
_UNINFORMATIVE_CATEGORIES = {"non classé", "uncategorized", "uncategorised", "sans catégorie"}
_URL = re.compile(r"https?://[^\s<>\"']+[^\s<>\"'.,;:!?)\]]")
# An intro in HTML keeps paragraphs, emphasis, lists and links; nothing else.
_INTRO_TAGS = {"p", "br", "a", "strong", "em", "b", "i", "ul", "ol", "li", "blockquote"}
_TAG_OR_TEXT = re.compile(r"(<[^>]*>)")
_SKIPPED_ELEMENTS = re.compile(r"<(code|pre|kbd|samp)\b", re.I)


def format_date(value: datetime, language: str) -> str:
    """ "30 décembre 2021" / "December 30, 2021" (Babel, CLDR data), no-break spaces inside."""
    return i18n.format_date(as_utc(value), language)


def digest_date(digest: Digest, articles: Sequence[DigestArticle]) -> datetime:
    """The newest article's date, else the day the digest was composed."""
    dates = [as_utc(a.published_at) for a in articles if a.published_at is not None]
    return max(dates) if dates else as_utc(digest.created_at)


def by_language(values: dict[str, str] | None, language: str) -> str:
    """A per-language field: this language's text, else the every-language one ("*")."""
    values = values or {}
    return values.get(language) or values.get("*") or ""


def digest_subject(digest: Digest, articles: Sequence[DigestArticle], language: str) -> str:
    custom = by_language(digest.subject_translations, language) or digest.subject
    if custom:
        return custom
    date = format_date(digest_date(digest, articles), language)
    return i18n.translate(language, "This week’s articles – %(date)s", date=date)


def _french(text: str, language: str, settings: Settings) -> str:
    return typography.for_language(text, language, enabled=settings.french_typography)


def intro_html(text: str, language: str, settings: Settings) -> Markup:
    """The editor's intro as HTML: sanitised HTML if it is some, else paragraphs of plain text
    with its links made clickable. French typography on text nodes only (not in attributes,
    URLs, code)."""
    if not text.strip():
        return Markup("")
    if text.lstrip().startswith("<"):
        cleaned = nh3.clean(
            text,
            tags=_INTRO_TAGS,
            attributes={"a": {"href"}},
            url_schemes={"http", "https", "mailto"},
            link_rel="noopener",
        )
    else:
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
        cleaned = "".join(f"<p>{_linkify(p)}</p>" for p in paragraphs)
    if not (settings.french_typography and language == "fr"):
        return Markup(cleaned)
    out: list[str] = []
    skipping = 0
    for part in _TAG_OR_TEXT.split(cleaned):
        if part.startswith("<"):
            if _SKIPPED_ELEMENTS.match(part):
                skipping += 1
            elif re.match(r"</(code|pre|kbd|samp)\b", part, re.I):
                skipping = max(0, skipping - 1)
            out.append(part)
        else:
            out.append(part if skipping else typography.french(part))
    return Markup("".join(out))


def _linkify(paragraph: str) -> str:
    out: list[str] = []
    last = 0
    for match in _URL.finditer(paragraph):
        out.append(html.escape(paragraph[last : match.start()], quote=False).replace("\n", "<br>"))
        url = html.escape(match.group(0), quote=True)
        out.append(f'<a href="{url}">{url}</a>')
        last = match.end()
    out.append(html.escape(paragraph[last:], quote=False).replace("\n", "<br>"))
    return "".join(out)


def intro_text(text: str, language: str, settings: Settings) -> str:
    """The intro for the text part: plain text, paragraphs kept."""
    if text.lstrip().startswith("<"):
        text = nh3.clean(re.sub(r"</p>|<br\s*/?>", "\n\n", text, flags=re.I), tags=set())
        text = html.unescape(text)
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    return "\n\n".join(_french(p, language, settings) for p in paragraphs)


def preheader(intro: str, titles: Sequence[str]) -> str:
    """The inbox snippet: the intro's first line, else the first titles (the subject already
    has the date)."""
    first_line = next((line.strip() for line in intro.splitlines() if line.strip()), "")
    if first_line:
        return truncate(first_line, PREHEADER_CHARS)
    return truncate(" · ".join(titles[:3]), PREHEADER_CHARS)


def article_categories(article: DigestArticle) -> list[str]:
    return [
        c for c in article.categories or [] if c.strip().casefold() not in _UNINFORMATIVE_CATEGORIES
    ]


def article_link(article: DigestArticle) -> Any:
    """The link-rewriting hook of the render context: every article link is a per-reader
    placeholder, filled with a tracked /r/ link (or the article's URL) in each copy."""
    return personalize.placeholder(link_field(article.position))


def _article_context(article: DigestArticle, language: str, settings: Settings) -> dict[str, Any]:
    title = _french(truncate(article.title, TITLE_MAX_CHARS), language, settings)
    summary = _french(truncate(article.summary or ""), language, settings)
    categories = article_categories(article)
    image_url = article.image_url if article.image_url and is_http_url(article.image_url) else ""
    return {
        "title": title,
        "url": article_link(article),
        "date": format_date(article.published_at, language) if article.published_at else "",
        "iso_date": as_utc(article.published_at).date().isoformat() if article.published_at else "",
        "categories": categories,
        # The summary, never the body: the digest invites to the site, and stays small.
        "summary": summary,
        "short_summary": truncate(summary, SHORT_SUMMARY_CHARS),
        "author": article.author or "",
        "image_url": image_url,
        # An image says what it shows; without the feed's description, the title it illustrates.
        "image_alt": (article.image_alt or "").strip() or title,
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
    digest = await service.get_digest(session, digest_id=digest_id)
    articles = await service.digest_articles(session, digest_id=digest_id)
    if positions is not None:
        articles = [a for a in articles if a.position in positions]
    return render_digest_of(digest, articles, language=language, settings=settings)


def render_digest_of(
    digest: Digest, articles: Sequence[DigestArticle], *, language: str, settings: Settings
) -> RenderedEmail:
    """`render_digest` for a digest and its articles at hand (no database)."""
    language = language_or_default(language, settings.default_language)
    marks = personalize.placeholders()
    subject = _french(digest_subject(digest, articles, language), language, settings)
    issue_date = format_date(digest_date(digest, articles), language)
    contexts = [_article_context(a, language, settings) for a in articles]
    intro = by_language(digest.intro, language)
    view_url = ""
    if settings.archive_enabled and digest.archived and digest.id is not None:
        view_url = archive_url(
            settings,
            digest.id,
            digest_subject(digest, articles, SLUG_LANGUAGE),
            language=language,
        )
    return render_email(
        "digest",
        language=language,
        subject=subject,
        view_url=view_url,
        open_url=personalize.placeholder("open_url") if settings.track_opens else "",
        preheader=preheader(intro_text(intro, language, settings), [c["title"] for c in contexts]),
        # The date once: under the title only when the subject does not already say it.
        issue_date="" if issue_date in subject else issue_date,
        articles=contexts,
        intro_html=intro_html(intro, language, settings),
        intro_text=intro_text(intro, language, settings),
        greeting_name=marks["greeting_name"],
        unsubscribe_url=marks["unsubscribe_url"],
        preferences_url=marks["preferences_url"],
        **brand_context(settings, language),
    )


async def preview_digest(
    session: AsyncSession, *, digest_id: int, language: str, settings: Settings, tokens: Tokens
) -> RenderedEmail:
    """Exactly what a subscriber gets, filled for a sample reader with a harmless link."""
    rendered = await render_digest(
        session, digest_id=digest_id, language=language, settings=settings
    )
    links = await digest_links(session, digest_id=digest_id)
    return fill_rendered(
        rendered, {**sample_values(settings, tokens, language=language), **direct_values(links)}
    )


async def digest_links(session: AsyncSession, *, digest_id: int) -> list[tuple[int, str]]:
    """(position, URL) of each article link, from the digest's frozen copy."""
    return [
        (a.position, a.url) for a in await service.digest_articles(session, digest_id=digest_id)
    ]
